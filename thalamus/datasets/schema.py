"""The RoutingDataset: per-prompt x per-model quality and cost, the unit every router trains on.

One table of prompts (id, text, task, split) plus aligned matrices with one column per model:
quality in [0, 1] (NaN = not observed), cost in USD per call (NaN = not observed), and
optionally output token counts and recorded responses. Saved as one Parquet file whose
schema metadata carries the model order, the price table and the cost provenance flag.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from thalamus.errors import DataError

PROMPT_COLUMNS = ("prompt_id", "text", "task", "split")
_PREFIX = {"quality": "q::", "cost": "c::", "output_tokens": "t::", "responses": "r::"}
_META_KEY = b"thalamus"


def stable_hash(text: str) -> str:
    """A hash of a prompt's text that is the same on every machine and run."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def hash_fraction(text: str, seed: int = 0) -> float:
    """Map a prompt to [0, 1) by its text hash, so splits do not depend on row order."""
    digest = hashlib.sha1(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class Price:
    """USD per one million input and output tokens."""

    input_per_m: float
    output_per_m: float

    def cost(self, prompt_tokens: np.ndarray | float, output_tokens: np.ndarray | float) -> np.ndarray:
        return np.asarray(
            (np.asarray(prompt_tokens) * self.input_per_m + np.asarray(output_tokens) * self.output_per_m)
            / 1e6,
            dtype=np.float64,
        )


@dataclass
class RoutingDataset:
    """Prompts x models outcomes. Matrices are aligned with ``prompts`` rows and ``models``."""

    name: str
    prompts: pd.DataFrame
    models: list[str]
    quality: np.ndarray
    cost: np.ndarray
    cost_estimated: bool = False
    output_tokens: np.ndarray | None = None
    responses: np.ndarray | None = None
    prices: dict[str, Price] = field(default_factory=dict)

    def __post_init__(self) -> None:
        prompts = self.prompts.reset_index(drop=True).copy()
        for col in PROMPT_COLUMNS:
            if col not in prompts.columns:
                prompts[col] = "" if col != "prompt_id" else [stable_hash(t)[:16] for t in prompts["text"]]
        prompts["task"] = prompts["task"].fillna("").astype(str)
        prompts["split"] = prompts["split"].fillna("").astype(str)
        self.prompts = prompts
        self.quality = np.asarray(self.quality, dtype=np.float64)
        self.cost = np.asarray(self.cost, dtype=np.float64)
        self.validate()

    # -- basic shape ---------------------------------------------------------------------
    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def texts(self) -> list[str]:
        return self.prompts["text"].astype(str).tolist()

    @property
    def tasks(self) -> np.ndarray:
        return self.prompts["task"].to_numpy(dtype=object)

    def __len__(self) -> int:
        return self.n_prompts

    def validate(self) -> None:
        """Raise DataError naming the dataset, row and model of the first inconsistency."""
        n, m = self.n_prompts, self.n_models
        if len(set(self.models)) != m:
            raise DataError(f"{self.name}: duplicate model names in {self.models}")
        for label, arr in (("quality", self.quality), ("cost", self.cost),
                           ("output_tokens", self.output_tokens), ("responses", self.responses)):
            if arr is not None and arr.shape != (n, m):
                raise DataError(f"{self.name}: {label} has shape {arr.shape}, expected ({n}, {m})")
        bad = np.argwhere((self.quality < 0) | (self.quality > 1))
        if len(bad):
            r, c = bad[0]
            raise DataError(
                f"{self.name}: quality {self.quality[r, c]} out of [0, 1] at row {r}, model {self.models[c]!r}"
            )
        bad = np.argwhere(self.cost < 0)
        if len(bad):
            r, c = bad[0]
            raise DataError(f"{self.name}: negative cost at row {r}, model {self.models[c]!r}")
        if self.prompts["prompt_id"].duplicated().any():
            dup = self.prompts.loc[self.prompts["prompt_id"].duplicated(), "prompt_id"].iloc[0]
            raise DataError(f"{self.name}: duplicate prompt_id {dup!r}")

    # -- selection -----------------------------------------------------------------------
    def subset(self, rows: Sequence[int] | np.ndarray, name: str | None = None) -> RoutingDataset:
        idx = np.asarray(rows)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return replace(
            self,
            name=name or self.name,
            prompts=self.prompts.iloc[idx].reset_index(drop=True),
            quality=self.quality[idx],
            cost=self.cost[idx],
            output_tokens=None if self.output_tokens is None else self.output_tokens[idx],
            responses=None if self.responses is None else self.responses[idx],
        )

    def select_models(self, models: Sequence[str]) -> RoutingDataset:
        missing = [m for m in models if m not in self.models]
        if missing:
            raise DataError(f"{self.name}: unknown models {missing}; known: {self.models}")
        cols = [self.models.index(m) for m in models]
        return replace(
            self,
            models=list(models),
            quality=self.quality[:, cols],
            cost=self.cost[:, cols],
            output_tokens=None if self.output_tokens is None else self.output_tokens[:, cols],
            responses=None if self.responses is None else self.responses[:, cols],
            prices={m: p for m, p in self.prices.items() if m in models},
        )

    def complete_mask(self) -> np.ndarray:
        """True for prompts where every model's quality and cost are observed."""
        return ~(np.isnan(self.quality).any(axis=1) | np.isnan(self.cost).any(axis=1))

    def complete_rows(self) -> RoutingDataset:
        """Only prompts where every model's quality and cost are observed."""
        return self.subset(self.complete_mask())

    # -- splits --------------------------------------------------------------------------
    def train_test(self, test_size: float = 0.3, seed: int = 0) -> tuple[RoutingDataset, RoutingDataset]:
        """The dataset's own split when every row has one (``val`` rows join train: routers hold
        out their own validation data), else a split by stable prompt hash."""
        split = self.prompts["split"]
        if split.isin(["train", "val", "test"]).all() and split.eq("test").any() and not split.eq("test").all():
            is_test = split.eq("test").to_numpy()
        else:
            is_test = np.array([hash_fraction(t, seed) < test_size for t in self.texts])
        return (self.subset(~is_test, f"{self.name}[train]"), self.subset(is_test, f"{self.name}[test]"))

    def fold_ids(self, k: int, seed: int = 0) -> np.ndarray:
        """The fold (0..k-1) of every prompt, fixed by its text hash."""
        return np.array([int(hash_fraction(t, seed) * k) for t in self.texts])

    def kfold(self, k: int = 5, seed: int = 0) -> Iterator[tuple[RoutingDataset, RoutingDataset]]:
        """k (train, test) pairs; a prompt's fold is fixed by its text hash."""
        if k < 2:
            raise DataError(f"kfold needs k >= 2, got {k}")
        fold = self.fold_ids(k, seed)
        for i in range(k):
            yield (self.subset(fold != i, f"{self.name}[fold{i}-train]"),
                   self.subset(fold == i, f"{self.name}[fold{i}-test]"))

    # -- summaries -----------------------------------------------------------------------
    def summary(self) -> pd.DataFrame:
        """Per-model mean quality, mean cost and share of missing quality."""
        with np.errstate(invalid="ignore"):
            return pd.DataFrame(
                {
                    "model": self.models,
                    "mean_quality": np.nanmean(self.quality, axis=0),
                    "mean_cost_usd": np.nanmean(self.cost, axis=0),
                    "missing_share": np.isnan(self.quality).mean(axis=0),
                }
            )

    # -- persistence ---------------------------------------------------------------------
    def to_parquet(self, path: str | Path) -> Path:
        """Write atomically: a failed write never leaves a half file at ``path``."""
        path = Path(path)
        cols: dict[str, object] = {c: self.prompts[c].to_numpy() for c in PROMPT_COLUMNS}
        for label in _PREFIX:
            arr = getattr(self, label)
            if arr is None:
                continue
            for j, model in enumerate(self.models):
                cols[_PREFIX[label] + model] = arr[:, j]
        table = pa.table(cols)
        meta = {
            "name": self.name,
            "models": self.models,
            "cost_estimated": self.cost_estimated,
            "prices": {m: [p.input_per_m, p.output_per_m] for m, p in self.prices.items()},
        }
        table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def from_parquet(cls, path: str | Path) -> RoutingDataset:
        path = Path(path)
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise DataError(f"{path}: not a Thalamus RoutingDataset (no '{_META_KEY.decode()}' metadata)")
        meta = json.loads(raw)
        df = table.to_pandas()
        models: list[str] = meta["models"]

        def matrix(label: str) -> np.ndarray | None:
            names = [_PREFIX[label] + m for m in models]
            if not all(n in df.columns for n in names):
                return None
            return df[names].to_numpy(dtype=object if label == "responses" else np.float64)

        quality, cost = matrix("quality"), matrix("cost")
        assert quality is not None and cost is not None
        return cls(
            name=meta["name"],
            prompts=df[list(PROMPT_COLUMNS)],
            models=models,
            quality=quality,
            cost=cost,
            cost_estimated=bool(meta["cost_estimated"]),
            output_tokens=matrix("output_tokens"),
            responses=matrix("responses"),
            prices={m: Price(*p) for m, p in meta["prices"].items()},
        )


@dataclass
class PreferenceDataset:
    """Pairwise votes: for a prompt, which of two models answered better (or a tie)."""

    name: str
    votes: pd.DataFrame  # columns: prompt_id, text, model_a, model_b, winner in {"a", "b", "tie"}, source

    def __post_init__(self) -> None:
        need = {"prompt_id", "text", "model_a", "model_b", "winner"}
        missing = need - set(self.votes.columns)
        if missing:
            raise DataError(f"{self.name}: preference votes lack columns {sorted(missing)}")
        bad = ~self.votes["winner"].isin(["a", "b", "tie"])
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{self.name}: row {row}: winner {self.votes['winner'].iloc[row]!r} is not 'a', 'b' or 'tie'"
            )

    @property
    def models(self) -> list[str]:
        return sorted(set(self.votes["model_a"]) | set(self.votes["model_b"]))

    def __len__(self) -> int:
        return len(self.votes)
