"""Matrix-factorization router in the RouteLLM style, trained with torch, predicting with numpy.

Each model m has a learned vector v_m; a prompt embedding e is projected by a learned W;
the score is ``w . (v_m * W e) + b_m`` and predicted quality is ``sigmoid(score)``. Two
ways to learn it:

- pointwise (``fit(RoutingDataset)``): binary cross-entropy on the observed quality cells
  (soft labels, so graded scores in [0, 1] work too), or squared error with ``loss="mse"``;
- pairwise (``fit_preferences(PreferenceDataset)`` or ``fit`` given one): a Bradley-Terry
  loss on the score difference of the two models in each vote, ties as 0.5 targets.

Training stops early when the loss on a held-out share of prompts (``val_fraction``,
chosen by text hash) has not improved for ``patience`` epochs, and keeps the best epoch's
weights. The learned matrices are plain numpy arrays, so prediction and loading need no
torch and a single query costs two small matrix products.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

import numpy as np
from scipy.special import expit

from thalamus.datasets.schema import PreferenceDataset, RoutingDataset
from thalamus.errors import ConfigError, DataError
from thalamus.router.base import Features, Router
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER
from thalamus.router.torch_utils import (
    EarlyStopping,
    batches,
    masked_bce,
    masked_mse,
    torch_session,
    validation_mask,
)

if TYPE_CHECKING:
    import torch

LOSSES = ("bce", "mse")
_VOTE_TARGET = {"a": 1.0, "b": 0.0, "tie": 0.5}


class MFRouter(Router):
    """Bilinear model x prompt scores; see the module docstring."""

    name = "mf"

    def __init__(
        self,
        dim: int = 128,
        epochs: int = 100,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 128,
        patience: int = 5,
        val_fraction: float = 0.1,
        loss: str = "bce",
        dropout: float = 0.0,
        embedder: str = DEFAULT_EMBEDDER,
        seed: int = 0,
    ) -> None:
        super().__init__(embedder=embedder, seed=seed)
        self.dim = dim
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.patience = patience
        self.val_fraction = val_fraction
        self.loss = loss
        self.dropout = dropout

    # -- fitting -------------------------------------------------------------------------
    def fit(self, dataset: RoutingDataset | PreferenceDataset, features: Features | None = None) -> Self:
        """Pointwise on a RoutingDataset, pairwise (Bradley-Terry) on a PreferenceDataset."""
        if isinstance(dataset, PreferenceDataset):
            return self.fit_preferences(dataset, features)
        return super().fit(dataset, features)

    def _check_params(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"mf: loss must be one of {LOSSES}, got {self.loss!r}")
        for key in ("dim", "epochs", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"mf: {key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"mf: val_fraction must be in [0, 1), got {self.val_fraction}")

    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        import torch

        self._check_params()
        emb = _as_matrix(X, dataset.n_prompts, dataset.name)
        quality = dataset.quality
        held = validation_mask(dataset.texts, self.val_fraction, self.seed)
        with np.errstate(invalid="ignore"):
            prior = np.nan_to_num(np.nanmean(quality[~held], axis=0), nan=0.5)
        point_loss = masked_bce if self.loss == "bce" else masked_mse
        E = torch.from_numpy(emb)
        Q = torch.from_numpy(quality.astype(np.float32))
        train_rows, val_rows = np.flatnonzero(~held), np.flatnonzero(held)

        def loss_on(params: dict[str, torch.Tensor], rows: np.ndarray, train: bool) -> torch.Tensor:
            return point_loss(self._scores(params, E[rows], train), Q[rows])

        self._train(emb.shape[1], len(self.models_), prior, loss_on, train_rows, val_rows)

    def fit_preferences(self, preferences: PreferenceDataset, features: Features | None = None) -> Self:
        """Learn from pairwise votes; ``features`` are embeddings of ``preferences.votes.text``.

        Preference data carries no costs, so predicted cost is 0 for every model until the
        router is refitted on outcomes; the knob then ranks by predicted quality alone. Like
        ``fit``, a failure leaves the router unfitted and a refit keeps nothing of the last fit.
        """
        self._clear_fitted()
        try:
            self._fit_preferences(preferences, features)
        except BaseException:
            self._clear_fitted()
            raise
        return self

    def _fit_preferences(self, preferences: PreferenceDataset, features: Features | None) -> None:
        import torch

        self._check_params()
        votes = preferences.votes.reset_index(drop=True)
        if len(votes) == 0:
            raise DataError(f"{preferences.name}: cannot fit mf on an empty preference dataset")
        self._init_fitted(preferences.models, np.full((0, len(preferences.models)), np.nan))  # no costs: all 0
        texts = votes["text"].astype(str).tolist()
        emb = _as_matrix(features if features is not None else self.features(texts), len(votes),
                         preferences.name)
        index = {m: j for j, m in enumerate(self.models_)}
        a = torch.tensor(votes["model_a"].map(index).to_numpy(dtype=np.int64))
        b = torch.tensor(votes["model_b"].map(index).to_numpy(dtype=np.int64))
        target = torch.tensor(votes["winner"].map(_VOTE_TARGET).to_numpy(dtype=np.float32))
        E = torch.from_numpy(emb)
        held = validation_mask(texts, self.val_fraction, self.seed)

        def loss_on(params: dict[str, torch.Tensor], rows: np.ndarray, train: bool) -> torch.Tensor:
            s = self._scores(params, E[rows], train)
            r = torch.arange(len(rows))
            return masked_bce(s[r, a[rows]] - s[r, b[rows]], target[rows])

        prior = np.full(len(self.models_), 0.5)
        self._train(emb.shape[1], len(self.models_), prior, loss_on,
                    np.flatnonzero(~held), np.flatnonzero(held))

    def _train(
        self,
        d_in: int,
        n_models: int,
        prior: np.ndarray,
        loss_on: Callable[[dict[str, torch.Tensor], np.ndarray, bool], torch.Tensor],
        train_rows: np.ndarray,
        val_rows: np.ndarray,
    ) -> None:
        """Adam over shuffled batches with early stopping on ``val_rows``; stores numpy weights."""
        import torch

        with torch_session(self.seed) as gen:
            params = _init_params(d_in, self.dim, n_models, prior, gen)
            # decay the factors only: shrinking the biases would pull every model toward 0.5
            opt = torch.optim.AdamW(
                [{"params": [params["proj"], params["vecs"]], "weight_decay": self.weight_decay},
                 {"params": [params["w"], params["bias"]], "weight_decay": 0.0}],
                lr=self.lr,
            )
            stopper = EarlyStopping(patience=self.patience)
            epoch = 0
            for epoch in range(self.epochs):
                train_loss = self._epoch(params, opt, loss_on, train_rows, gen)
                if len(val_rows) == 0:
                    stopper.step(epoch, train_loss, params)
                    continue
                with torch.no_grad():
                    val_loss = float(loss_on(params, val_rows, False))
                if stopper.step(epoch, val_loss, params):
                    break
        best = stopper.best_state or params
        self.epochs_run_: int = epoch + 1
        self.best_epoch_: int = stopper.best_epoch + 1
        self.val_history_: list[float] = stopper.history
        self.proj_: np.ndarray = best["proj"].numpy().astype(np.float32)
        self.model_vecs_: np.ndarray = (best["vecs"] * best["w"]).numpy().astype(np.float32)
        self.model_bias_: np.ndarray = best["bias"].numpy().astype(np.float32)

    def _epoch(self, params: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
               loss_on: Callable[[dict[str, torch.Tensor], np.ndarray, bool], torch.Tensor],
               rows: np.ndarray, gen: torch.Generator) -> float:
        total, count = 0.0, 0
        for idx in batches(len(rows), self.batch_size, gen):
            opt.zero_grad()
            loss = loss_on(params, rows[idx], True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        return total / max(count, 1)

    def _scores(self, params: dict[str, torch.Tensor], E: torch.Tensor, train: bool) -> torch.Tensor:
        import torch

        h = E @ params["proj"]
        if train and self.dropout > 0:
            h = torch.nn.functional.dropout(h, p=self.dropout, training=True)
        return h @ (params["vecs"] * params["w"]).T + params["bias"]

    # -- prediction ----------------------------------------------------------------------
    def scores(self, X: Features) -> np.ndarray:
        """(n, n_models) raw scores (logits) from prompt embeddings."""
        self.check_fitted()
        emb = np.asarray(X, dtype=np.float32)
        return np.asarray((emb @ self.proj_) @ self.model_vecs_.T + self.model_bias_, dtype=np.float64)

    def _predict_quality(self, X: Features) -> np.ndarray:
        return np.asarray(expit(self.scores(X)))


def _as_matrix(X: Features, n: int, name: str) -> np.ndarray:
    emb = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    if emb.ndim != 2 or emb.shape[0] != n:
        raise DataError(f"{name}: mf needs one embedding row per prompt ({n}), got shape {emb.shape}")
    return emb


def _init_params(d_in: int, dim: int, n_models: int, prior: np.ndarray,
                 gen: torch.Generator) -> dict[str, Any]:
    """Small random projection and model vectors; biases start at each model's mean quality logit."""
    import torch

    p = np.clip(prior, 0.02, 0.98)
    params = {
        "proj": torch.randn(d_in, dim, generator=gen) / np.sqrt(d_in),
        "vecs": torch.randn(n_models, dim, generator=gen) / np.sqrt(dim),
        "w": torch.ones(dim),
        "bias": torch.as_tensor(np.log(p / (1 - p)), dtype=torch.float32),
    }
    return {k: v.requires_grad_(True) for k, v in params.items()}
