"""Datasets by name or path: ``load_dataset("routerbench_subset")`` or ``load_dataset("my.csv")``.

Named datasets are read in place from their folder under the data directory
(``Settings().data_dir``, env ``THALAMUS_DATA_DIR``). Parsing RouterBench's list literals takes
1.5-4 s on these shared 2-core machines and a cached Parquet reads in ~0.2 s, so each parsed
named dataset is cached under ``Settings().cache_dir / "datasets"``, keyed by its name and a
hash of the source files' paths, sizes and mtimes plus the loader code; changing either makes
a new key. A path ending in .parquet / .csv / .jsonl is a user file
(``thalamus.datasets.user_format``); user files are not cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from thalamus.datasets import alpaca, common, dcrouter, pricing, routellm, routerbench, routerdc, schema
from thalamus.datasets.schema import RoutingDataset
from thalamus.datasets.user_format import SUFFIXES, read_user_file
from thalamus.errors import DataError, UnknownNameError

PRICES = "pricing_routerarena"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # the folder under the data directory that must exist
    loader: Callable[[Path], RoutingDataset]
    description: str
    extra_folders: tuple[str, ...] = ()  # other folders the loader reads (price table)


SPECS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("routerbench_subset", "routerbench_subset", routerbench.load_routerbench,
                    "RouterBench ARC/MBPP/Winogrande, 11 models, observed cost"),
        DatasetSpec("routellm_mmlu", "routellm", routellm.load_routellm_mmlu,
                    "RouteLLM MMLU, GPT-4 vs Mixtral, decontaminated", (PRICES,)),
        DatasetSpec("routellm_gsm8k", "routellm", routellm.load_routellm_gsm8k,
                    "RouteLLM GSM8K, GPT-4 vs Mixtral, decontaminated", (PRICES,)),
        DatasetSpec("routellm_mtbench", "routellm", routellm.load_routellm_mtbench,
                    "RouteLLM MT-Bench judge scores, GPT-4 vs Mixtral", (PRICES,)),
        DatasetSpec("llmrouter_dcrouter", "llmrouter_dcrouter", dcrouter.load_dcrouter,
                    "LLMRouter 14 task families, 9 NIM models"),
        DatasetSpec("routerdc_7model", "routerdc_7model", routerdc.load_routerdc,
                    "RouterDC 10 benchmarks, 7 open 7-8B models"),
        DatasetSpec("alpaca_eval", "alpaca_eval", alpaca.load_alpaca_eval,
                    "AlpacaEval 2.0 preference vs GPT-4-Turbo, 48 models", (PRICES,)),
    )
}


def dataset_names() -> list[str]:
    return list(SPECS)


def default_data_dir() -> Path:
    from thalamus.config import Settings

    return Settings().data_dir


def is_path_like(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return Path(text).suffix in SUFFIXES or "/" in text or "\\" in text


def default_cache_dir() -> Path:
    from thalamus.config import Settings

    return Settings().cache_dir / "datasets"


def source_key(spec: DatasetSpec, data_dir: Path) -> str:
    """Hash of the source files (relative path, size, mtime) and of the loader's code."""
    digest = hashlib.sha1()
    for folder in (spec.folder, *spec.extra_folders):
        for path in sorted((data_dir / folder).rglob("*")):
            if path.is_file():
                st = path.stat()
                digest.update(f"{path.relative_to(data_dir)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for module_file in sorted({inspect.getfile(spec.loader), common.__file__, schema.__file__, pricing.__file__}):
        digest.update(Path(module_file).read_bytes())
    return digest.hexdigest()[:16]


def _cached_load(spec: DatasetSpec, data_dir: Path, cache_dir: Path) -> RoutingDataset:
    common.dataset_dir(data_dir, spec.folder)  # a clear error before hashing a missing folder
    path = cache_dir / f"{spec.name}-{source_key(spec, data_dir)}.parquet"
    if path.is_file():
        try:
            return RoutingDataset.from_parquet(path)
        except (DataError, KeyError, ValueError):
            pass  # an unreadable cache entry is rebuilt below
    ds = spec.loader(data_dir)
    with contextlib.suppress(OSError):  # a read-only cache only costs speed
        # a name unique to this process, then an atomic rename: concurrent loads never mix bytes
        ds.to_parquet(path.with_name(f".{path.stem}.{os.getpid()}.parquet")).replace(path)
        for stale in cache_dir.glob(f"{spec.name}-*.parquet"):
            if stale != path:
                stale.unlink()
    return ds


def load_dataset(
    name_or_path: str | Path, data_dir: Path | None = None, *, cache: bool = True
) -> RoutingDataset:
    """A named dataset from the data directory (cached, see above), or a user file given by path."""
    if is_path_like(name_or_path):
        return read_user_file(name_or_path)
    spec = SPECS.get(str(name_or_path))
    if spec is None:
        raise UnknownNameError(
            f"unknown dataset {str(name_or_path)!r}; known names: {', '.join(SPECS)} "
            f"(or a path to a {' / '.join(SUFFIXES)} file)"
        )
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if not cache:
        return spec.loader(root)
    return _cached_load(spec, root, default_cache_dir())
