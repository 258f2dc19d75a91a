"""The Router contract (scikit-learn conventions) and its save/load without pickle.

``__init__`` stores hyperparameters only; ``fit(dataset)`` returns self and sets learned
attributes whose names end in ``_``. Predictions come from features: prompt embeddings
for most routers, raw texts for routers that read text themselves (``uses_embeddings =
False``). ``route`` embeds once and applies the pure policy.

Saving writes ``router.json`` (name, hyperparameters, JSON-able fitted attributes) and
``arrays.npz`` (array-valued fitted attributes). A router whose state holds something else
(a faiss index, boosters, torch weights) writes it in ``_save_extra`` / ``_load_extra`` in
that library's own format.

A router fitted on one embedder's vectors is meaningless on another's, so the fitted
``embedder_id_`` is checked whenever an embedder is attached: at ``load`` (the embedder its
``embedder`` spec names, or one passed in) and in ``use_embedder`` (the gateway's batching
wrapper). A failed ``fit`` leaves the router unfitted, and a refit starts from a clean state.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError, DataError, NotFittedError, UnknownNameError
from thalamus.router.embedders import Embedder, get_embedder
from thalamus.router.policy import Decision, Knob, decide

Features = np.ndarray | list[str]
FORMAT_VERSION = 1


class Router:
    """Base class: subclasses implement ``_fit`` and either ``_predict_quality`` (and may override
    ``_predict_cost``) or ``_predict``, where quality and cost share work."""

    name: ClassVar[str] = ""
    uses_embeddings: ClassVar[bool] = True
    format_version: ClassVar[int] = FORMAT_VERSION  # of the artifact this class writes

    def __init__(self, embedder: str = "minilm", seed: int = 0) -> None:
        self.embedder = embedder
        self.seed = seed

    # -- hyperparameters -----------------------------------------------------------------
    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """Every hyperparameter (the __init__ arguments along the class chain) with its default."""
        defaults: dict[str, Any] = {}
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                for p in inspect.signature(klass.__init__).parameters.values():  # type: ignore[misc]
                    if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD:
                        defaults.setdefault(p.name, p.default)
        return defaults

    @classmethod
    def param_names(cls) -> list[str]:
        return list(cls.param_defaults())

    def get_params(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self.param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- features ------------------------------------------------------------------------
    def _embedder(self) -> Embedder:
        attached: Embedder | None = getattr(self, "_attached_embedder", None)
        return attached if attached is not None else get_embedder(self.embedder)

    def embedder_in_use(self) -> Embedder:
        """The embedder ``features`` calls: the attached one (``use_embedder``), else the named one."""
        return self._embedder()

    def use_embedder(self, embedder: Embedder) -> Self:
        """Embed with ``embedder`` (e.g. a batching wrapper); it must make the vectors the router was fitted on."""
        fitted = getattr(self, "embedder_id_", None)
        if self.uses_embeddings and fitted is not None and embedder.id != fitted:
            raise ConfigError(f"{type(self).__name__} was trained on embedder {fitted!r} and cannot serve with "
                              f"embedder {embedder.id!r}; retrain it with --embedder for that embedder")
        self._attached_embedder = embedder
        return self

    def features(self, texts: Sequence[str]) -> Features:
        if not self.uses_embeddings:
            return list(texts)
        return self._embedder().embed(list(texts))

    # -- fitting -------------------------------------------------------------------------
    def fit(self, dataset: RoutingDataset, features: Features | None = None) -> Self:
        """Learn from a dataset; ``features`` may be passed to reuse embeddings already computed."""
        self._clear_fitted()  # a refit keeps nothing of the last fit, even one refused below
        if dataset.n_prompts == 0:
            raise DataError(f"{dataset.name}: cannot fit a router on an empty dataset")
        try:
            self._init_fitted(dataset.models, dataset.cost)
            X = features if features is not None else self.features(dataset.texts)
            self._fit(X, dataset)
        except BaseException:
            self._clear_fitted()  # a failed fit must not leave a router that looks fitted
            raise
        return self

    def _clear_fitted(self) -> None:
        for key in list(self._fitted_attributes()):
            delattr(self, key)

    def _init_fitted(self, models: Sequence[str], cost: np.ndarray) -> None:
        """The fitted state every router shares: models, embedder id, mean cost and the knob's cost scale."""
        self.models_: list[str] = list(models)
        if self.uses_embeddings:
            self.embedder_id_: str = self._embedder().id
        seen = np.isfinite(cost)
        total = np.where(seen, cost, 0.0)
        # a model never priced gets the mean of the others; a dataset with no costs at all
        # (allowed by the user formats) routes on quality alone, with every cost 0
        fill = float(total.sum() / seen.sum()) if seen.any() else 0.0
        counts = seen.sum(axis=0)
        self.mean_cost_: np.ndarray = np.where(counts > 0, total.sum(axis=0) / np.maximum(counts, 1), fill)
        # one scale for the lambda knob, fixed at fit time so decisions do not drift per batch
        self.cost_scale_: float = float(self.mean_cost_.max()) or 1.0

    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        raise NotImplementedError

    def check_fitted(self) -> None:
        if not hasattr(self, "models_"):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit(dataset) or Router.load(dir) first"
            )

    # -- prediction ----------------------------------------------------------------------
    def predict_quality(self, texts: Sequence[str]) -> np.ndarray:
        """(n, n_models) predicted quality in [0, 1]."""
        self.check_fitted()
        return self.quality_from_features(self.features(texts))

    def predict_cost(self, texts: Sequence[str]) -> np.ndarray:
        """(n, n_models) expected USD cost per call."""
        self.check_fitted()
        return self.cost_from_features(self.features(texts))

    def quality_from_features(self, X: Features) -> np.ndarray:
        self.check_fitted()
        return np.clip(np.asarray(self._predict_quality(X), dtype=np.float64), 0.0, 1.0)

    def cost_from_features(self, X: Features) -> np.ndarray:
        self.check_fitted()
        return np.asarray(self._predict_cost(X), dtype=np.float64)

    def predict_from_features(self, X: Features) -> tuple[np.ndarray, np.ndarray]:
        """(quality, cost), each (n, n_models): both predictions from one pass over the features."""
        self.check_fitted()
        quality, cost = self._predict(X)
        return np.clip(np.asarray(quality, dtype=np.float64), 0.0, 1.0), np.asarray(cost, dtype=np.float64)

    # A subclass implements either ``_predict`` (quality and cost from shared work) or
    # ``_predict_quality`` (and optionally ``_predict_cost``); the defaults derive the others.
    def _predict(self, X: Features) -> tuple[np.ndarray, np.ndarray]:
        return self._predict_quality(X), self._predict_cost(X)

    def _joint(self) -> bool:
        return type(self)._predict is not Router._predict

    def _predict_quality(self, X: Features) -> np.ndarray:
        if self._joint():
            return self._predict(X)[0]
        raise NotImplementedError(f"{type(self).__name__} implements neither _predict nor _predict_quality")

    def _predict_cost(self, X: Features) -> np.ndarray:
        """Default: the cost half of ``_predict``, else each model's mean observed training cost."""
        if self._joint():
            return self._predict(X)[1]
        return np.broadcast_to(self.mean_cost_, (len(X), len(self.models_))).copy()

    def route(self, text: str, knob: Knob | None = None) -> Decision:
        self.check_fitted()
        X = self.features([text])
        decision = self.route_features(X, knob)
        if self.uses_embeddings:  # kept for online updates and the ledger's store_embeddings
            decision.features = np.asarray(X[0])
        return decision

    def route_features(self, X: Features, knob: Knob | None = None) -> Decision:
        """The decision for one prompt given its features (a batch of one): ``route`` after embedding.

        Online routers override this to explore; the replay simulator calls it directly.
        """
        quality, cost = self.predict_from_features(X)
        return decide(quality[0], cost[0], self.models_, knob or Knob(), cost_scale=self.cost_scale_)

    # -- persistence ---------------------------------------------------------------------
    def _fitted_attributes(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def save(self, directory: str | Path) -> Path:
        """Write the artifact directory: router.json, arrays.npz and any library-format files."""
        self.check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        state: dict[str, Any] = {}
        for key, value in self._fitted_attributes().items():
            if isinstance(value, np.ndarray):
                arrays[key] = value
            elif _jsonable(value):
                state[key] = value
            elif key not in self._extra_attributes():
                raise TypeError(f"{type(self).__name__}.{key} is neither an array nor JSON; "
                                "save it in _save_extra")
        self._save_extra(directory)
        np.savez(directory / "arrays.npz", allow_pickle=False, **arrays)
        meta = {"format": self.format_version, "router": self.name, "params": self.get_params(), "state": state}
        (directory / "router.json").write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path, embedder: Embedder | None = None) -> Router:
        """Load any router's artifact; the registry picks the class named in router.json.

        The embedder (``embedder``, else the one the artifact's spec names) must have the id the
        router was fitted with: a ConfigError names both ids otherwise.
        """
        directory = Path(directory)
        meta_path = directory / "router.json"
        if not meta_path.exists():
            raise DataError(f"{directory}: not a router artifact (no router.json); train one with "
                            "`thalamus train ROUTER --data D --out DIR`")
        meta = json.loads(meta_path.read_text())
        klass = get_router_class(meta["router"]) if cls is Router else cls
        if int(meta.get("format", 1)) > klass.format_version:
            raise DataError(f"{meta_path}: artifact format {meta['format']} is newer than this thalamus reads "
                            f"({klass.format_version} for {klass.name}); upgrade thalamus")
        router = klass(**meta["params"])
        for key, value in meta["state"].items():
            setattr(router, key, value)
        with np.load(directory / "arrays.npz", allow_pickle=False) as npz:
            for key in npz.files:
                setattr(router, key, npz[key])
        router._load_extra(directory)
        if router.uses_embeddings and getattr(router, "embedder_id_", None) is not None:
            try:
                router.use_embedder(embedder or get_embedder(router.embedder))
            except ConfigError as exc:
                raise ConfigError(f"{directory}: {exc}") from exc
        return router

    def add_model(self, name: str, prior: str | None = None, cost: float | np.ndarray | None = None) -> Any:
        """Serve a model the router was not trained on. Only routers built on per-group profiles can
        (``cluster``); the others need re-training with data for the model (docs/own-models.md)."""
        raise ConfigError(f"the {self.name or type(self).__name__} router cannot add model {name!r} without "
                          "re-training: train it on data that includes the model, or use the cluster router, "
                          "which takes new models as profiles (`thalamus onboard`)")

    def _extra_attributes(self) -> tuple[str, ...]:
        """Fitted attributes saved by _save_extra rather than the generic path."""
        return ()

    def _save_extra(self, directory: Path) -> None:
        return None

    def _load_extra(self, directory: Path) -> None:
        return None


def observed_mean(values: np.ndarray, fill: float = 0.5) -> np.ndarray:
    """Each column's (model's) mean over its observed entries (NaN = not observed); ``fill`` where none is."""
    with np.errstate(invalid="ignore"):
        return np.asarray(np.nan_to_num(np.nanmean(values, axis=0), nan=fill), dtype=np.float64)


def artifact_version(directory: str | Path) -> str:
    """A short content hash of an artifact directory: changes whenever any file does."""
    h = hashlib.sha256()
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            h.update(path.relative_to(directory).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


Feedback = tuple[str | np.ndarray, str | int, float, float]  # (text or context vector, model, score, cost)


@runtime_checkable
class OnlineRouter(Protocol):
    """A router that learns from bandit feedback as it serves (linucb, thompson): the gateway's learning
    loop updates it under its lock and checkpoints it."""

    def partial_fit(self, feedback: Sequence[Feedback]) -> Any: ...

ROUTER_GROUP = "thalamus.routers"  # the entry-point group of router classes, built-ins included


@cache
def router_entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ROUTER_GROUP)}


def get_router_class(name: str) -> type[Router]:
    """The Router subclass registered under ``name`` (entry points of ``thalamus.routers``)."""
    eps = router_entry_points()
    if name not in eps:
        raise UnknownNameError(f"unknown router {name!r}; registered: {', '.join(sorted(eps))}")
    klass = eps[name].load()
    if not (isinstance(klass, type) and issubclass(klass, Router)):
        raise UnknownNameError(f"entry point {name!r} in {ROUTER_GROUP} is not a Router subclass")
    return klass
