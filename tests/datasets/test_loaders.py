"""Every public-data loader on the real files in the shared data folder: shapes, names, ranges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thalamus.datasets import alpaca, dcrouter, routellm, routerbench, routerdc
from thalamus.datasets.common import read_jsonl
from thalamus.datasets.llmfao import load_llmfao
from thalamus.datasets.pricing import load_price_table
from thalamus.datasets.schema import Price, RoutingDataset


def assert_well_formed(ds: RoutingDataset) -> None:
    assert ds.quality.shape == ds.cost.shape == (ds.n_prompts, ds.n_models)
    q = ds.quality[~np.isnan(ds.quality)]
    assert q.min() >= 0.0 and q.max() <= 1.0
    assert (ds.cost[~np.isnan(ds.cost)] > 0).all()
    assert ds.prompts["prompt_id"].is_unique
    assert ds.prompts["text"].str.strip().ne("").all()


# -- routerbench_subset ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def rb(data_dir: Path) -> RoutingDataset:
    return routerbench.load_routerbench(data_dir)


def test_routerbench_merges_split_rows(rb: RoutingDataset, data_dir: Path) -> None:
    raw = sum(len(pd.read_csv(p)) for p in (data_dir / "routerbench_subset").glob("*.csv"))
    assert raw == 3178
    assert rb.n_prompts == 3164
    assert rb.prompts["split"].value_counts().to_dict() == {"train": 2217, "test": 947}
    assert rb.prompts["task"].value_counts().to_dict() == {"arc-challenge": 1470, "winogrande": 1267,
                                                           "mbpp": 427}
    assert not np.isnan(rb.quality).any() and not np.isnan(rb.cost).any()
    assert set(np.unique(rb.quality)) == {0.0, 1.0}


def test_routerbench_merged_row_takes_each_field_from_the_right_half(rb: RoutingDataset) -> None:
    i = rb.prompts.index[rb.prompts["prompt_id"] == "arc-challenge.val.136"][0]
    gpt35 = rb.models.index("gpt-3.5-turbo-1106")
    assert rb.prompts.loc[i, "split"] == "test"  # the 10-model half is in the test file
    assert rb.quality[i, gpt35] == 1.0  # only the 1-model half (train file) scored gpt-3.5
    assert rb.cost[i, gpt35] == pytest.approx(0.000476)  # the 10-model half's single-prompt cost
    assert rb.cost[i, rb.models.index("claude-v1")] == pytest.approx(0.003816)
    assert len(rb.texts[i]) == 1887  # one copy of the question, not the duplicated list


def test_routerbench_models_text_and_responses(rb: RoutingDataset) -> None:
    assert rb.models == list(routerbench.MODELS) and rb.n_models == 11
    assert not rb.cost_estimated
    assert rb.texts[0].startswith("George wants to warm his hands")  # list literal parsed
    assert rb.responses is not None and rb.responses.shape == (3164, 11)
    assert not any(str(r).startswith("['") for r in rb.responses[:, 0])
    assert rb.output_tokens is not None and rb.output_tokens.min() >= 0
    assert rb.output_tokens[0, 0] == np.ceil(len(rb.responses[0, 0]) / 4)
    assert_well_formed(rb)


# -- routellm --------------------------------------------------------------------------------
def test_routellm_mmlu_contamination_filter(data_dir: Path) -> None:
    files = sorted((data_dir / "routellm/mmlu/responses").glob("mmlu_*.csv"))
    assert len(files) == 57
    assert sum(len(pd.read_csv(p)) for p in files) == 14042
    ds = routellm.load_routellm_mmlu(data_dir)
    assert ds.n_prompts == 14037  # 5 contaminated prompts removed
    bad = routellm.contaminated_prompts(data_dir / "routellm/mmlu/contaminated_prompts.jsonl")
    assert len(bad) == 5 and not set(ds.texts) & bad
    assert ds.models == ["gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"]
    assert ds.prompts["task"].nunique() == 57
    assert (ds.prompts["task"] == "high_school_biology").sum() == 310
    assert ds.quality.mean(axis=0) == pytest.approx([0.8059, 0.6809], abs=5e-4)  # paper: 80.6 / 68.1
    assert_well_formed(ds)


def test_routellm_costs_are_priced_estimates(data_dir: Path) -> None:
    ds = routellm.load_routellm_mmlu(data_dir)
    assert ds.cost_estimated
    assert ds.prices == {"gpt-4-1106-preview": Price(10, 30),
                         "mistralai/Mixtral-8x7B-Instruct-v0.1": Price(0.6, 0.6)}
    tokens = np.ceil(len(ds.texts[0]) / 4)
    assert ds.cost[0, 0] == pytest.approx((tokens * 10 + 1 * 30) / 1e6)
    assert ds.cost[0, 1] == pytest.approx((tokens + 1) * 0.6 / 1e6)


def test_routellm_gsm8k(data_dir: Path) -> None:
    assert len(pd.read_csv(data_dir / "routellm/gsm8k/gsm8k_responses.csv")) == 1319
    ds = routellm.load_routellm_gsm8k(data_dir)
    assert ds.n_prompts == 1307  # 12 contaminated prompts removed
    assert not ds.texts[0].startswith("Janet’s ducks")  # eval_idx 0 is contaminated
    assert ds.responses is not None and ds.output_tokens is not None
    assert ds.output_tokens[0, 0] == np.ceil(len(ds.responses[0, 0]) / 4)
    assert set(np.unique(ds.quality)) == {0.0, 1.0}
    assert_well_formed(ds)


def test_routellm_mtbench_mean_of_turns(data_dir: Path) -> None:
    ds = routellm.load_routellm_mtbench(data_dir)
    assert ds.n_prompts == 72  # 80 questions, 8 contaminated
    assert "81" not in set(ds.prompts["prompt_id"])  # question 81 is contaminated
    judgements = read_jsonl(data_dir / "routellm/mt_bench/judgements.jsonl")
    qid = int(ds.prompts["prompt_id"].iloc[0])
    for j, model in enumerate(ds.models):
        scores = [r["score"] for r in judgements if r["question_id"] == qid and r["model"] == model]
        assert len(scores) == 2
        assert ds.quality[0, j] == pytest.approx((np.mean(scores) - 1) / 9)
    assert ds.prompts["task"].nunique() == 8
    assert ds.quality.mean(axis=0) == pytest.approx([0.9124, 0.8090], abs=5e-4)
    assert ds.responses is not None and all(len(r) > 0 for r in ds.responses.ravel())
    i = list(ds.prompts["prompt_id"]).index("131")
    assert ds.responses[i, 1] == "[5, 1, 3]"  # the first-turn answer, parsed from the judge prompt
    assert_well_formed(ds)


# -- llmrouter_dcrouter ----------------------------------------------------------------------
def test_dcrouter_shape_tasks_and_prices(data_dir: Path) -> None:
    ds = dcrouter.load_dcrouter(data_dir)
    assert ds.n_prompts == 6108 and ds.n_models == 9
    assert ds.prompts["split"].value_counts().to_dict() == {"train": 5608, "test": 500}
    assert ds.prompts["task"].ne("").all() and ds.prompts["task"].nunique() == 14
    assert (ds.prompts["task"] == "human_eval").sum() == 214
    assert ds.prices["qwen2.5-7b-instruct"] == Price(0.2, 0.2)  # numeric field, not the prose's $0.30
    assert ds.prices["llama-3.3-nemotron-super-49b-v1"] == Price(0.9, 0.9)
    assert ds.cost_estimated
    assert_well_formed(ds)


def test_dcrouter_query_files_split_on_newline_only(data_dir: Path) -> None:
    path = data_dir / "llmrouter_dcrouter/default_query_train.jsonl"
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 5617  # splitlines cuts one query at U+0085
    assert len(read_jsonl(path)) == 5616
    ds = dcrouter.load_dcrouter(data_dir)
    odd = ds.prompts[ds.prompts["text"].str.contains("\x85")]
    assert len(odd) == 1 and odd["task"].iloc[0] == "trivia_qa"


# -- routerdc_7model -------------------------------------------------------------------------
def test_routerdc_tasks_splits_and_quality(data_dir: Path) -> None:
    ds = routerdc.load_routerdc(data_dir)
    assert ds.n_prompts == 20600 and ds.n_models == 7
    assert ds.prompts["split"].value_counts().to_dict() == {"test": 13002, "train": 7598}
    counts = ds.prompts.groupby(["task", "split"]).size().to_dict()
    assert counts[("gsm8k", "train")] == 1000 and counts[("gsm8k", "test")] == 1319
    for ood, n in {"ceval": 1346, "mbpp": 500, "javascript": 164, "MATH_prealgebra": 871}.items():
        assert counts == counts | {(ood, "test"): n} and (ood, "train") not in counts
    mc = ds.prompts["task"].isin(routerdc.MULTIPLE_CHOICE).to_numpy()
    assert set(np.unique(ds.quality[mc])) == {0.0, 1.0}
    assert len(np.unique(ds.quality[ds.prompts["task"].eq("gsm8k").to_numpy()])) == 11  # pass@10 rates
    assert (ds.cost == ds.cost[:, :1]).all()  # one price for every model
    assert_well_formed(ds)


def test_routerdc_task_and_split_from_stem() -> None:
    assert routerdc.task_and_split("arc_challenge_train") == ("arc_challenge", "train")
    assert routerdc.task_and_split("gsm8k-test") == ("gsm8k", "test")
    assert routerdc.task_and_split("MATH_prealgebra") == ("MATH_prealgebra", "test")


# -- alpaca_eval -----------------------------------------------------------------------------
def test_alpaca_eval_drops_gamed_models(data_dir: Path) -> None:
    ds = alpaca.load_alpaca_eval(data_dir)
    assert ds.n_prompts == 805 and ds.n_models == 48
    for gone in ("example", "gpt4_gamed", "gpt4_1106_preview", "alpaca-7b_concise", "alpaca-7b_verbose"):
        assert gone not in ds.models
    assert not any(m.endswith(("_concise", "_verbose")) for m in ds.models)
    assert int(np.isnan(ds.quality).sum()) == 6  # absent (instruction, model) pairs in the source
    assert (np.isnan(ds.quality) == np.isnan(ds.cost)).all()
    assert ds.prompts["task"].value_counts().to_dict() == {
        "selfinstruct": 252, "oasst": 188, "koala": 156, "helpful_base": 129, "vicuna": 80}
    assert_well_formed(ds)


def test_alpaca_eval_quality_and_prices(data_dir: Path) -> None:
    ds = alpaca.load_alpaca_eval(data_dir)
    ann = pd.read_parquet(data_dir / "alpaca_eval" / alpaca.ANNOTATIONS)
    row = ann[(ann["generator_2"] == "claude-2") & (ann["instruction_id"] == 0)].iloc[0]
    j = ds.models.index("claude-2")
    assert ds.quality[0, j] == pytest.approx(row["preference"] - 1)
    assert ds.prices["gpt-3.5-turbo-1106"] == Price(1, 2)
    assert ds.prices["vicuna-13b"] == Price(0.6, 0.6)  # <= 40B tier
    assert ds.prices["FuseChat-Llama-3.2-1B-Instruct"] == Price(0.15, 0.15)  # <= 4B tier
    out = np.ceil(row["output_2_chars"] / 4)
    prompt = np.ceil(len(ds.texts[0]) / 4)
    assert ds.cost[0, j] == pytest.approx(ds.prices["claude-2"].cost(prompt, out))


# -- llmfao and prices -----------------------------------------------------------------------
def test_llmfao_votes(data_dir: Path) -> None:
    ds = load_llmfao(data_dir)
    assert len(ds) == 8931 + 3236 + 3236
    by_source = ds.votes.groupby("source")["winner"].value_counts().to_dict()
    assert by_source[("crowd", "tie")] == 3471 and by_source[("gpt4", "b")] == 1700
    assert ds.votes["prompt_id"].nunique() == 19
    first = ds.votes.iloc[0]
    assert (first["model_a"], first["model_b"], first["winner"]) == ("Airoboros L2 70B", "Weaver 12k", "tie")
    assert first["text"].startswith("Argue for and against the use of kubernetes")


def test_price_table(data_dir: Path) -> None:
    table = load_price_table(data_dir)
    raw = json.loads((data_dir / "pricing_routerarena/cost.json").read_text())
    assert len(table) == len(raw) == 45
    assert table["gpt-4-1106-preview"] == Price(10, 30)
    assert table["open-mixtral-8x7b"] == Price(0.6, 0.6)
