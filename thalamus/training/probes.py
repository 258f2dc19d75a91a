"""Probe prompts for onboarding a model: where they come from and which ones to send.

Sources (``--probe``): a named dataset (``routerbench_subset``), a file (a RoutingDataset file, or any
CSV / JSONL with a ``text`` column and optionally ``reference`` and ``task``), or ``ledger:URL``, the
prompts a gateway stored (``ledger.store_prompts: true``): the team's own traffic.

Which prompts: ``n`` of them stratified over the router's groups (each prompt's most likely group), as
even a share per group as the source allows, in a seeded random order, so a few probes already touch
every group and the profile's per-group estimates all narrow together (``choose_probes``); each probe's
answer counts for its hard group (``assignments``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from thalamus.datasets.registry import is_path_like, load_dataset
from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError, DataError
from thalamus.router.cluster import ClusterRouter

LEDGER_PREFIX = "ledger:"
POOL_PER_PROBE = 20  # candidate prompts embedded per probe wanted (a large source is subsampled first)


@dataclass
class ProbeSet:
    """Prompts to probe with; ``dataset`` when the source records outcomes (for the recorded grader and
    the peers' answers of the agreement grader), ``references`` when it has gold answers."""

    name: str
    texts: list[str]
    dataset: RoutingDataset | None = None
    references: list[str] | None = None


def load_probes(source: str, data_dir: Path | None = None) -> ProbeSet:
    """A probe set from a dataset name, a file path or ``ledger:URL``."""
    if source.startswith(LEDGER_PREFIX):
        return _ledger_probes(source[len(LEDGER_PREFIX):])
    path = Path(source)
    if is_path_like(source) and path.suffix.lower() in (".csv", ".jsonl"):
        plain = _plain_probes(path)
        if plain is not None:
            return plain
    dataset = load_dataset(source, data_dir)
    return ProbeSet(dataset.name, dataset.texts, dataset)


def _read_plain(path: Path, head: bool = False) -> pd.DataFrame:
    """The probe file as a frame; with ``head``, only its header (CSV) or first record (JSONL)."""
    if not path.is_file():
        raise DataError(f"{path}: probe file not found")
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, nrows=0 if head else None)
        return pd.read_json(path, lines=True, nrows=1 if head else None)
    except ValueError as exc:
        raise DataError(f"{path}: cannot read the probe file ({exc})") from exc


def _outcome_columns(frame: pd.DataFrame) -> list[str]:
    return [str(c) for c in frame.columns if str(c).startswith(("q::", "quality")) or str(c) == "model"]


def _plain_probes(path: Path) -> ProbeSet | None:
    """The probes of a prompts-only file (a ``text`` column and no per-model outcome columns), read once;
    None for a routing-dataset file, told by its header or first record where they show outcome columns
    (so that load_dataset is the only one to read it)."""
    if _outcome_columns(_read_plain(path, head=True)):
        return None
    frame = _read_plain(path)
    if "text" not in frame.columns or _outcome_columns(frame):
        return None
    texts = frame["text"]
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise DataError(f"{path}: row {bad[0] + 1}: 'text' is empty; every probe needs a prompt")
    refs = None
    if "reference" in frame.columns:
        refs = ["" if pd.isna(r) else str(r) for r in frame["reference"]]
    return ProbeSet(path.stem, [str(t) for t in texts], None, refs)


def _ledger_probes(url: str) -> ProbeSet:
    from thalamus.ledger.store import Ledger

    ledger = Ledger(url)
    try:
        rows = ledger.recent(limit=1_000_000)
    finally:
        ledger.close()
    texts = rows["prompt_text"].dropna().astype(str) if "prompt_text" in rows else pd.Series([], dtype=str)
    unique = list(dict.fromkeys(t for t in texts if t.strip()))
    if not unique:
        raise DataError(f"ledger {url}: no stored prompts; set ledger.store_prompts: true in the gateway "
                        "config and serve some traffic, or probe with a dataset or file")
    return ProbeSet(f"ledger:{url}", unique)


def stratified(groups: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` items spread evenly over ``groups`` (round robin over shuffled groups)."""
    rng = np.random.default_rng(seed)
    by_group = [rng.permutation(np.flatnonzero(groups == g)) for g in np.unique(groups)]
    out: list[int] = []
    depth = 0
    while len(out) < n and any(depth < len(b) for b in by_group):
        for g in rng.permutation(len(by_group)):
            if depth < len(by_group[g]) and len(out) < n:
                out.append(int(by_group[g][depth]))
        depth += 1
    return np.asarray(out, dtype=np.int64)


def choose_probes(router: ClusterRouter, probes: ProbeSet, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``probes``, their P(group | prompt)): ``n`` prompts stratified over the router's groups."""
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    pool = np.arange(len(probes.texts))
    if len(pool) > POOL_PER_PROBE * n:
        pool = np.sort(rng.choice(pool, POOL_PER_PROBE * n, replace=False))
    probs = router.group_probabilities(router.features([probes.texts[i] for i in pool]))
    pick = stratified(probs.argmax(axis=1), n, seed)
    return pool[pick], probs[pick]


def assignments(router: ClusterRouter, probs: np.ndarray, tasks: list[str] | None = None) -> np.ndarray:
    """One-hot group of each probe: its task where the probe set's task labels are the router's groups,
    else its most likely group. The trained profiles are means over hard groups, so a new model's must
    be too: soft weights would blur a model that is strong in one group and weak in another toward its
    overall mean, and route it where it is weak."""
    groups = probs.argmax(axis=1)
    names = list(router.group_names_)
    if tasks is not None and all(t in names for t in tasks):
        groups = np.array([names.index(t) for t in tasks], dtype=np.int64)
    one_hot: np.ndarray = np.eye(len(names))[groups]
    return one_hot
