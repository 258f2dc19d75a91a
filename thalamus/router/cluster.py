"""Cluster-profile router: a prompt is routed by the group of training prompts it belongs to.

Training prompts are grouped by the dataset's ``task`` labels (``groups="task"``) or by
k-means on their embeddings (``groups="kmeans"``); ``auto`` uses the tasks when the dataset
names at least two, k-means otherwise. Each group gets a per-model profile: its mean quality
and mean cost, shrunk toward the model's overall mean by ``prior`` pseudo-prompts (NaN = not
observed is masked out). A multinomial logistic regression on the embedding gives
P(group | prompt), and the predicted quality and cost are the P-weighted profiles, so a prompt
between two groups gets a blend rather than a hard assignment.

This is cluster-based routing in the style of UniRoute (Jitkrittum et al. 2025), with
supervised groups where the data names them: on datasets made of many benchmarks, which
benchmark a prompt comes from tells more about which model wins than its nearest neighbours
do, because neighbours in embedding space cross task boundaries. Only the classifier's weights
and the profiles are stored; prediction is one matrix product and a softmax.

Models as profiles (router/profiles.py): every model's column of the group tables is its profile,
a posterior with an uncertainty. ``add_model(name, prior=...)`` gives a model the router was not
trained on a profile from a prior (pooled, ``like:MODEL`` or ``tier:NAME``), ``observe`` narrows any
profile with graded answers, ``remove_model`` retires one; none of it re-trains the classifier.
Profiles are saved in ``profiles.json`` (artifact format 2); a format-1 artifact gets trained
profiles built from its tables on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from scipy.special import softmax

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError, DataError
from thalamus.router.base import Features, Router, observed_mean
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER
from thalamus.router.knn import normalise
from thalamus.router.profiles import GroupPrior, ModelProfile, fit_group_prior, new_profile, trained_profile

PROFILES_FILE = "profiles.json"

Grouping = Literal["auto", "task", "kmeans"]
GROUPINGS = ("auto", "task", "kmeans")


def shrunk_means(values: np.ndarray, groups: np.ndarray, n_groups: int, overall: np.ndarray,
                 prior: float) -> np.ndarray:
    """(n_groups, m) NaN-masked mean of ``values`` (n, m) per group, shrunk toward ``overall`` (m,)."""
    seen = np.isfinite(values)
    one_hot = np.zeros((len(values), n_groups))
    one_hot[np.arange(len(values)), groups] = 1.0
    total = one_hot.T @ np.where(seen, values, 0.0)
    count = one_hot.T @ seen.astype(np.float64)
    den = count + prior
    return np.where(den > 0, (total + prior * overall) / np.where(den > 0, den, 1.0), overall)


class ClusterRouter(Router):
    """Quality and cost of each model = its profile on the prompt's (soft-assigned) group."""

    name = "cluster"
    format_version: ClassVar[int] = 2

    def __init__(self, groups: Grouping = "auto", n_clusters: int = 20, C: float = 10.0, prior: float = 5.0,
                 max_iter: int = 2000, caution: float = 1.0, embedder: str = DEFAULT_EMBEDDER, seed: int = 0) -> None:
        super().__init__(embedder=embedder, seed=seed)
        self.caution = caution
        self.groups = groups
        self.n_clusters = n_clusters
        self.C = C
        self.prior = prior
        self.max_iter = max_iter
        self._profiles: dict[str, ModelProfile] = {}

    def _check_params(self) -> None:
        if self.groups not in GROUPINGS:
            raise ConfigError(f"cluster: groups must be one of {', '.join(GROUPINGS)}, got {self.groups!r}")
        if self.n_clusters < 1:
            raise ConfigError(f"cluster: n_clusters must be >= 1, got {self.n_clusters}")
        if self.C <= 0:
            raise ConfigError(f"cluster: C must be > 0, got {self.C}")
        if self.prior < 0:
            raise ConfigError(f"cluster: prior must be >= 0, got {self.prior}")
        if self.caution < 0:
            raise ConfigError(f"cluster: caution must be >= 0, got {self.caution}")

    def _labels(self, emb: np.ndarray, dataset: RoutingDataset) -> tuple[list[str], np.ndarray]:
        """Group names and each training prompt's group index."""
        tasks = dataset.tasks.astype(str)
        named = np.unique(tasks[tasks != ""])
        use_tasks = self.groups == "task" or (self.groups == "auto" and len(named) >= 2)
        if use_tasks:
            if len(named) < 2:
                raise DataError(f"{dataset.name}: cluster groups='task' needs at least two task labels, "
                                f"found {len(named)}; use groups='kmeans'")
            names, index = np.unique(tasks, return_inverse=True)  # an unlabelled prompt forms group ''
            return [str(n) for n in names], index
        from sklearn.cluster import KMeans

        k = min(self.n_clusters, len(emb))
        index = KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit_predict(emb)
        return [f"cluster-{i}" for i in range(k)], index

    def _fit(self, X: Features, dataset: RoutingDataset) -> None:
        self._check_params()
        emb = normalise(np.asarray(X))
        names, index = self._labels(emb, dataset)
        present, index = np.unique(index, return_inverse=True)  # k-means may leave a cluster empty
        names = [names[i] for i in present]
        g = len(names)
        weights, bias = np.zeros((g, emb.shape[1])), np.zeros(g)
        if g >= 2:
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(emb, index)
            weights, bias = np.asarray(clf.coef_, np.float64), np.asarray(clf.intercept_, np.float64)
            if g == 2:  # sklearn keeps one row for two classes: the logit of the second
                weights, bias = np.vstack([np.zeros_like(weights), weights]), np.r_[0.0, bias]
        self.group_names_: list[str] = names
        self.weights_: np.ndarray = weights
        self.bias_: np.ndarray = bias
        overall = observed_mean(dataset.quality)
        self.group_quality_: np.ndarray = shrunk_means(dataset.quality, index, g, overall, self.prior)
        self.group_cost_: np.ndarray = shrunk_means(dataset.cost, index, g, self.mean_cost_, self.prior)
        seen = np.isfinite(dataset.quality).astype(np.float64)
        self.group_count_: np.ndarray = np.stack([seen[index == k].sum(axis=0) for k in range(g)])
        prior = fit_group_prior(dataset.quality, index, self.group_quality_)
        self.noise_var_: np.ndarray = prior.noise_var
        self.resid_var_: float = prior.resid_var
        self.offset_var_: float = prior.offset_var
        self._profiles = {}

    def group_probabilities(self, X: Features) -> np.ndarray:
        """(n, n_groups) P(group | prompt)."""
        self.check_fitted()
        return np.asarray(softmax(normalise(np.asarray(X)).astype(np.float64) @ self.weights_.T + self.bias_, axis=1))

    def _predict(self, X: Features) -> tuple[np.ndarray, np.ndarray]:
        p = self.group_probabilities(X)
        return p @ self.routing_quality(), p @ self.group_cost_

    def routing_quality(self) -> np.ndarray:
        """(groups, models) quality the policy sees: the posterior mean, minus ``caution`` standard
        deviations for models added after training, so a new model takes a group's traffic only once
        the evidence says it is better there, not on a few lucky answers."""
        sd = getattr(self, "group_sd_", None)  # absent before any add_model
        return self.group_quality_ if sd is None else self.group_quality_ - self.caution * sd

    # -- models as profiles --------------------------------------------------------------
    def group_prior(self) -> GroupPrior:
        """What the training data says about the groups (difficulty, spread between models)."""
        self.check_fitted()
        known = [self.models_.index(m) for m in self.trained_models()]
        stats = self._stats_prior()  # format-1 artifacts have no fitted variances: its defaults stand in
        return GroupPrior(self.group_quality_[:, known], stats.noise_var, stats.resid_var, stats.offset_var)

    def profile(self, model: str) -> ModelProfile:
        """The profile of one of the router's models (trained ones are built from the tables on demand)."""
        self.check_fitted()
        if model not in self.models_:
            raise ConfigError(f"cluster router has no model {model!r}; its models are {', '.join(self.models_)}")
        found = self._profiles.get(model)
        if found is None:
            j = self.models_.index(model)
            found = trained_profile(model, self.group_quality_[:, j], self._counts()[:, j],
                                    self._stats_prior().noise_var, self.group_cost_[:, j])
            self._profiles[model] = found
        return found

    def profiles(self) -> list[ModelProfile]:
        return [self.profile(m) for m in self.models_]

    def trained_models(self) -> list[str]:
        """The models the router was trained on (their profiles come from the training data)."""
        return [m for m in self.models_ if self.profile(m).source == "trained"]

    def _counts(self) -> np.ndarray:
        count = getattr(self, "group_count_", None)  # absent in format-1 artifacts
        return count if count is not None else np.full_like(self.group_quality_, self.prior)

    def _stats_prior(self) -> GroupPrior:
        noise = getattr(self, "noise_var_", None)
        noise = noise if noise is not None else np.full(len(self.group_names_), 0.25)
        return GroupPrior(self.group_quality_, noise, float(getattr(self, "resid_var_", 0.01)),
                          float(getattr(self, "offset_var_", 0.01)))

    def add_model(self, name: str, prior: str | None = None, cost: float | np.ndarray | None = None) -> ModelProfile:
        """Serve ``name`` without re-training: a profile from ``prior`` ("pooled" or None, "like:MODEL",
        "tier:NAME"); ``cost`` USD per call (scalar or per group; default: the like-model's, else the
        known models' mean)."""
        self.check_fitted()
        if name in self.models_:
            raise ConfigError(f"cluster router already has model {name!r}; use observe() to update its profile")
        self.profiles()  # materialise the trained profiles before the tables grow
        group_prior = self.group_prior()
        known = self.trained_models()
        if cost is None:
            like = prior.partition(":")[2] if prior and prior.startswith("like:") else None
            cost = self.profile(like).cost() if like in self.models_ else self.group_cost_.mean(axis=1)
        cost = np.broadcast_to(np.asarray(cost, dtype=np.float64), (len(self.group_names_),)).copy()
        profile = new_profile(name, group_prior, known, prior, cost)
        self._profiles[name] = profile
        sd = self._sd()  # before the tables grow
        self.models_ = [*self.models_, name]
        self.mean_cost_ = np.r_[self.mean_cost_, float(cost.mean())]
        self.group_quality_ = np.c_[self.group_quality_, profile.mean()]
        self.group_cost_ = np.c_[self.group_cost_, profile.cost()]
        self.group_count_ = np.c_[self._counts(), np.zeros(len(self.group_names_))]
        self.group_sd_ = np.c_[sd, np.sqrt(profile.variance())]
        return profile

    def _sd(self) -> np.ndarray:
        """The caution term's standard deviations: 0 for trained models (their training answers decide)."""
        sd = getattr(self, "group_sd_", None)
        return sd if sd is not None else np.zeros_like(self.group_quality_)

    def observe(self, model: str, probs: np.ndarray, scores: np.ndarray, costs: np.ndarray | None = None) -> None:
        """Graded answers of ``model``: ``probs`` (n, groups) from ``group_probabilities``, ``scores`` (n,)."""
        self.profile(model).observe(probs, scores, costs)
        self.refresh(model)

    def refresh(self, model: str) -> None:
        """Re-read one profile into the routing tables after its statistics were set from outside (the
        gateway's shared profile store): new arrays, not in-place writes, so a decision reading the tables
        in another thread sees the old column or the new one."""
        profile = self.profile(model)
        j = self.models_.index(model)
        quality, cost, mean_cost = self.group_quality_.copy(), self.group_cost_.copy(), self.mean_cost_.copy()
        quality[:, j], cost[:, j], mean_cost[j] = profile.mean(), profile.cost(), float(profile.cost().mean())
        if profile.source != "trained":
            sd = self._sd().copy()
            sd[:, j] = np.sqrt(profile.variance())
            self.group_sd_ = sd
        self.group_quality_, self.group_cost_, self.mean_cost_ = quality, cost, mean_cost

    def remove_model(self, name: str) -> None:
        """Retire a model: its column and profile go; the groups and the other profiles stay."""
        self.profiles()
        if name not in self.models_:
            raise ConfigError(f"cluster router has no model {name!r}; its models are {', '.join(self.models_)}")
        if len(self.models_) == 1:
            raise ConfigError(f"cannot remove {name!r}: it is the router's only model")
        j = self.models_.index(name)
        keep = [k for k in range(len(self.models_)) if k != j]
        sd = self._sd()
        self.models_ = [self.models_[k] for k in keep]
        self.mean_cost_ = self.mean_cost_[keep]
        self.group_quality_, self.group_cost_ = self.group_quality_[:, keep], self.group_cost_[:, keep]
        self.group_count_ = self._counts()[:, keep]
        self.group_sd_ = sd[:, keep]
        del self._profiles[name]

    def _save_extra(self, directory: Path) -> None:
        data = {"groups": self.group_names_, "profiles": [p.to_dict() for p in self.profiles()]}
        (directory / PROFILES_FILE).write_text(json.dumps(data, indent=1))

    def _load_extra(self, directory: Path) -> None:
        self._profiles = {}
        path = directory / PROFILES_FILE
        if not path.exists():
            return  # format 1: trained profiles are built from the tables when asked for
        data = json.loads(path.read_text())
        for i, item in enumerate(data.get("profiles", [])):
            profile = ModelProfile.from_dict(item, f"{path}: profiles[{i}]")
            self._profiles[profile.name] = profile
        missing = set(self.models_) - set(self._profiles)
        if missing:
            raise DataError(f"{path}: no profile for model(s) {sorted(missing)} of router.json; the artifact "
                            "is inconsistent: re-run `thalamus onboard` or `thalamus train`")
