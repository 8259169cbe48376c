"""ALP-GMM: sample tasks where absolute learning progress is high, via a Gaussian mixture.

Portelas et al., "Teacher algorithms for curriculum learning of Deep RL in continuously
parameterized environments", CoRL 2019, arXiv:1910.07224 (code: flowersteam/teachDeepRL,
``teachDRL/teachers/algos/alp_gmm.py``).

An episode is one problem: its task vector τ and its return r (the group's mean reward).
- ALP of a new episode = |r − r_nearest|, r_nearest the return of the nearest earlier task
  (Euclidean; ties go to the most recent, which on integer difficulty grids means "the last
  problem with the same parameters"); 0 while at most ``alp_min_points`` episodes exist.
- Every ``fit_rate`` episodes a GMM (full covariance, EM from a k-means++ start, one init)
  is fitted for K = ``k_min``..``k_max`` on the last ``fit_rate`` vectors [τ, ALP], keeping
  the K with the lowest ``criterion`` (AIC; BIC and AICc are options).
- Sampling: during the first ``bootstrap`` episodes, and with probability
  ``random_task_ratio`` afterwards, a uniform task (a source by TaskMix weight, parameters
  uniform in the source's box). Otherwise component k with probability ∝ its mean ALP
  coordinate μ_k[−1] (not the mixture weights), x ~ N(μ_k, Σ_k), the ALP coordinate is
  dropped and the task is decoded and clipped to the box.

Task space (a choice): one joint space for all positive-weight sources. τ = [one-hot of the
source (omitted with one source), then every source's difficulty parameters normalised to
[0, 1] in their own coordinates (0 for the other sources)]. Decoding takes the source as the
argmax of the one-hot part and that source's coordinates as its parameters (rounded for
integer sources). A single mixture thus allocates across sources and within each box.

Scaled to the testbed (choices): ``fit_rate`` = 64 episodes (code 250; the testbed sees 32
problems a step) and ``bootstrap`` = ``fit_rate``; ``reg_covar`` = 1e-3 (sklearn's 1e-6 makes
the likelihood of points on an integer grid degenerate); EM runs ``em_iters`` = 30
iterations. The GMM is our own numpy EM (no scikit-learn).
"""
from __future__ import annotations

import math

import numpy as np

from explorl.explore.acted import Acted
from explorl.explore.base import Curriculum
from explorl.registry import register


# ---- a small Gaussian mixture (EM, full covariance) ---------------------------------------
def _log_gauss(X: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    d = X.shape[1]
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (X - mean).T)
    logdet = 2 * np.log(np.diag(chol)).sum()
    return -0.5 * (d * math.log(2 * math.pi) + logdet + (z ** 2).sum(0))


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = a.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def fit_gmm(X: np.ndarray, k: int, rng: np.random.Generator, iters: int = 30, reg: float = 1e-3):
    """EM for a ``k``-component full-covariance GMM; returns ``(weights, means, covs, loglik)``."""
    n, d = X.shape
    # k-means++ seeding, then a few Lloyd iterations for the initial responsibilities
    means = [X[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min([((X - m) ** 2).sum(1) for m in means], axis=0)
        means.append(X[rng.choice(n, p=d2 / d2.sum())] if d2.sum() > 0 else X[rng.integers(n)])
    means = np.array(means)
    for _ in range(3):
        assign = np.argmin(((X[:, None] - means[None]) ** 2).sum(-1), axis=1)
        means = np.array([X[assign == j].mean(0) if (assign == j).any() else means[j] for j in range(k)])
    resp = np.eye(k)[assign]
    eye = np.eye(d) * reg
    loglik = -np.inf
    for _ in range(iters):
        # M-step
        nk = resp.sum(0) + 1e-10
        weights = nk / n
        means = resp.T @ X / nk[:, None]
        covs = np.empty((k, d, d))
        for j in range(k):
            diff = X - means[j]
            covs[j] = (resp[:, j, None] * diff).T @ diff / nk[j] + eye
        # E-step
        logp = np.stack([_log_gauss(X, means[j], covs[j]) for j in range(k)], 1) + np.log(weights)
        norm = _logsumexp(logp, 1)
        resp = np.exp(logp - norm[:, None])
        new = float(norm.sum())
        if abs(new - loglik) < 1e-6 * max(1.0, abs(new)):
            loglik = new
            break
        loglik = new
    return weights, means, covs, loglik


def information_criterion(kind: str, loglik: float, k: int, d: int, n: int) -> float:
    p = (k - 1) + k * d + k * d * (d + 1) // 2
    if kind == "aic":
        return 2 * p - 2 * loglik
    if kind == "bic":
        return p * math.log(n) - 2 * loglik
    if kind == "aicc":
        return 2 * p - 2 * loglik + (2 * p * (p + 1) / (n - p - 1) if n - p - 1 > 0 else math.inf)
    raise ValueError(f"unknown criterion {kind!r}")


@register("curriculum", "alp_gmm", paper="ALP-GMM, Portelas et al., CoRL 2019, arXiv:1910.07224")
class ALPGMM(Curriculum):
    # the GMM is fitted (gmm_k > 0 on some step) and sampling is not all random
    engaged_when = (Acted("curriculum/gmm_k", ">", 0, reduce="max", what="the GMM is fitted"),
                    Acted("curriculum/random_frac", "<", 1, reduce="min", what="not every task drawn at random"))
    state_keys = ("rng", "history", "fit_buffer", "episodes", "since_fit", "gmm")

    def __init__(self, fit_rate: int = 64, bootstrap: int | None = None, random_task_ratio: float = 0.2,
                 k_min: int = 2, k_max: int = 10, criterion: str = "aic", em_iters: int = 30,
                 reg_covar: float = 1e-3, alp_min_points: int = 5, history_size: int | None = None):
        if fit_rate < 2 or not 1 <= k_min <= k_max:
            raise ValueError("curriculum alp_gmm: need fit_rate >= 2 and 1 <= k_min <= k_max")
        if not 0 <= random_task_ratio <= 1:
            raise ValueError(f"curriculum alp_gmm: random_task_ratio must be in [0, 1], got {random_task_ratio}")
        if criterion not in ("aic", "bic", "aicc"):
            raise ValueError(f"curriculum alp_gmm: criterion must be aic, bic or aicc, got {criterion!r}")
        self.fit_rate, self.random_task_ratio = fit_rate, random_task_ratio
        self.bootstrap = fit_rate if bootstrap is None else bootstrap
        self.k_min, self.k_max, self.criterion = k_min, k_max, criterion
        self.em_iters, self.reg_covar = em_iters, reg_covar
        self.alp_min_points, self.history_size = alp_min_points, history_size

    def bind(self, tasks, seed):
        super().bind(tasks, seed)
        self.sources = [n for n in tasks.names if tasks.weights[n] > 0]
        self.layout = {}  # source -> [(param, low, high, coordinate)]
        dim = len(self.sources) if len(self.sources) > 1 else 0
        for name in self.sources:
            ranges = tasks.sources[name].param_ranges
            self.layout[name] = [(key, *ranges[key], dim + i) for i, key in enumerate(sorted(ranges))]
            dim += len(ranges)
        self.dim = dim
        self.history: list[tuple[list[float], float]] = []   # (τ, return) of every episode
        self.fit_buffer: list[list[float]] = []               # the last fit_rate [τ, ALP]
        self.episodes, self.since_fit = 0, 0
        self.gmm: dict | None = None

    # ---- task vectors ------------------------------------------------------------------
    def encode(self, source: str, params: dict) -> list[float]:
        x = [0.0] * self.dim
        if len(self.sources) > 1:
            x[self.sources.index(source)] = 1.0
        for key, low, high, coord in self.layout[source]:
            x[coord] = (float(params.get(key, low)) - low) / (high - low) if high > low else 0.5
        return x

    def decode(self, x: np.ndarray) -> tuple[str, dict]:
        source = self.sources[int(np.argmax(x[:len(self.sources)]))] if len(self.sources) > 1 else self.sources[0]
        params = {key: low + float(np.clip(x[coord], 0.0, 1.0)) * (high - low)
                  for key, low, high, coord in self.layout[source]}
        return source, self.tasks.sources[source].clip_params(params)

    # ---- sampling ----------------------------------------------------------------------
    def next(self, n):
        gen = np.random.default_rng(self.rng.randrange(2**63))
        problems, random_count = [], 0
        for _ in range(n):
            if self.gmm is None or self.episodes < self.bootstrap or self.rng.random() < self.random_task_ratio:
                source = self.rng.choices(self.sources, weights=[self.tasks.weights[s] for s in self.sources])[0]
                problems.append(self.tasks.sample(self.rng, source=source))
                random_count += 1
            else:
                g = self.gmm
                alps = np.clip(np.array(g["means"])[:, -1], 0, None)
                probs = alps / alps.sum() if alps.sum() > 0 else np.full(len(alps), 1 / len(alps))
                k = gen.choice(len(probs), p=probs)
                x = gen.multivariate_normal(np.array(g["means"][k]), np.array(g["covs"][k]))
                source, params = self.decode(x[:-1])
                problems.append(self.tasks.sample(self.rng, source=source, params=params))
        return problems, {"curriculum/random_frac": random_count / max(1, n),
                          "curriculum/gmm_k": float(len(self.gmm["weights"])) if self.gmm else 0.0}

    # ---- feedback ----------------------------------------------------------------------
    def alp(self, x: list[float], r: float) -> float:
        if len(self.history) <= self.alp_min_points:
            return 0.0
        tasks = np.array([h[0] for h in self.history])
        dist = ((tasks - np.array(x)) ** 2).sum(1)
        nearest = len(dist) - 1 - int(np.argmin(dist[::-1]))  # ties: the most recent
        return abs(r - self.history[nearest][1])

    def observe(self, stats):
        alps = []
        for problem, rewards in zip(stats.problems, stats.rewards):
            if not rewards or problem.source not in self.layout:
                continue
            r = sum(rewards) / len(rewards)
            x = self.encode(problem.source, problem.params)
            a = self.alp(x, r)
            alps.append(a)
            self.history.append((x, r))
            if self.history_size is not None:
                del self.history[:-self.history_size]
            self.fit_buffer.append(x + [a])
            del self.fit_buffer[:-self.fit_rate]
            self.episodes += 1
            self.since_fit += 1
        metrics = {"curriculum/alp_mean": sum(alps) / len(alps) if alps else 0.0}
        if self.since_fit >= self.fit_rate and self.episodes >= self.bootstrap:
            self.fit()
            self.since_fit = 0
            metrics["curriculum/gmm_k"] = float(len(self.gmm["weights"]))
        return metrics

    def fit(self) -> None:
        X = np.array(self.fit_buffer, dtype=np.float64)
        gen = np.random.default_rng(self.rng.randrange(2**63))
        best = None
        for k in range(self.k_min, min(self.k_max, len(X)) + 1):
            weights, means, covs, loglik = fit_gmm(X, k, gen, self.em_iters, self.reg_covar)
            score = information_criterion(self.criterion, loglik, k, X.shape[1], len(X))
            if best is None or score < best[0]:
                best = (score, weights, means, covs)
        if best is not None:
            self.gmm = {"weights": best[1].tolist(), "means": best[2].tolist(), "covs": best[3].tolist()}
