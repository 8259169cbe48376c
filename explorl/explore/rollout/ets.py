"""ETS: Efficient Tree Search (Hooper et al., arXiv:2502.13575; code SqueezeAILab/ETS ``rebase.py``).

A step-level tree search of width W (the group's n) built on REBASE. Level by level
(``select_and_expand``, rebase.py lines 604-636): a frontier node that finished its response
uses up one unit of width and becomes an answer; the others are candidates, and an integer
program keeps some of them (``select_softmax_costmodel``, lines 373-569); each kept node is
continued by its share of the remaining width, one step each (lines 160-183). The search stops
when the width is used up, no candidate is left, or at depth 25 (lines 651-663).

The integer program over the N candidates (x_i ∈ {0,1}: keep) and their M distinct ancestors
(y_j: an ancestor stays in the KV cache), lines 394-518:

    REBASE outcome (425-449): sort by score s, descending; n_i = ceil(W' e^{s_i/T} / Σ_{k not yet
        allocated} e^{s_k/T}), W' the width not yet allocated;  O_i = n_i / Σ n
    cost (404-407, 423): C = 1/(M+N) per node, coefficient −λ_c (+1e-4 when λ_c = 0: the code's guard)
    coverage (451-486): the newest step's texts in K clusters, c_k ≤ Σ_{i∈k} x_i, weight λ_s/K;
        only when λ_s > 0, N > 1 and the texts are not all the same
    max  Σ O_i x_i − λ_c C Σ_j y_j − λ_c C Σ_i x_i + (λ_s/K) Σ_k c_k
    s.t. y_j ≤ Σ_{i under j} x_i;  y_j ≥ x_i for every i under j;  Σ_i x_i ≥ 1

then REBASE again over the kept nodes only (520-561: weights s/T, −inf for the dropped; sorted
ascending and reversed, so equal scores are allotted in reverse order) gives each its width.

Stand-ins and choices:
- the process reward model: ``value: rollout`` (default) scores a new unfinished node by the mean
  verifier reward of ``value_rollouts`` continuations sampled from it to the end (a Monte-Carlo
  value; their tokens count as generated, they are not answers); ``value: verifier`` gives every
  unfinished node ``prior`` (only finished responses are verified, so the program then works from
  cost and coverage alone). Finished nodes score their verifier reward.
- the sentence-embedding clusters (their ``math-similarity/Bert-MLM_arXiv-MP-class_zbMath``, average
  linkage on cosine distance cut at 0.05): ``clusters: exact`` puts equal step texts in one
  cluster (what average linkage at a small cut gives when distance is 0 for equal texts, 1 for
  others); ``clusters: ngram`` embeds each step text as counts of its character 1-3-grams and
  runs the authors' clustering (scipy average linkage, cosine, cut at ``cluster_threshold``).
- the solver: ``brute`` enumerates every non-empty subset of candidates (given x, the best y and
  c follow: y_j = 1 iff a kept node lies under j, c_k = 1 iff a kept node lies in k), exact for
  small N; ``milp`` is scipy's HiGHS branch and bound on the same program (the authors' CBC via
  PuLP is not needed); ``auto`` takes ``brute`` up to 12 candidates. Both return an optimum; where
  several subsets tie they may return different ones.
- REBASE's allocations are computed in float64 with the sum over the nodes not yet allocated
  summed afresh (the code's float32 and running subtraction can round a ceiling up, a last share
  past the width).
- a step ends after ``step_tokens`` tokens or a token containing ``step_marker`` (their "ки" or
  "\\n\\n"); the testbed's answers have no step markers, so fixed-length steps by default.
- at ``max_depth`` the remaining candidates are continued to the end of their responses, one
  each, so the tree always ends with W answers (a training group needs them).
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from explorl.explore.rollout.trees import TreeRollout, step_segments
from explorl.registry import register

#: ``solver: auto`` enumerates subsets up to this many candidates, then solves the program.
BRUTE_FORCE_MAX = 12


def rebase_allocation(scores, width: int, temperature: float) -> list[int]:
    """The REBASE widths of rebase.py lines 425-449: sorted by score, descending (stable), each
    node gets ceil(width_left * e^{s/T} / Σ e^{s/T} over the nodes not yet allocated)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    return _allocate(order, [math.exp(scores[i] / temperature) for i in order], width, len(scores))


def _allocate(order, exp, width: int, n: int) -> list[int]:
    """REBASE's sequential ceilings; the sum over the nodes not yet allocated is summed afresh, not
    decremented as the code does (its subtraction can leave e/Σ a hair above 1 for the last node and
    round its share up past the width)."""
    out, left = [0] * n, width
    for j, (i, e) in enumerate(zip(order, exp)):
        total = math.fsum(exp[j:])
        if total > 0:
            out[i] = min(left, math.ceil(left * e / total))
            left -= out[i]
    return out


def kept_widths(scores, keep, width: int, temperature: float) -> list[int]:
    """The widths of rebase.py lines 520-561: REBASE over the kept nodes (weights s/T, the dropped
    at −inf), sorted ascending and reversed."""
    weights = [scores[i] / temperature if keep[i] else -math.inf for i in range(len(scores))]
    order = sorted(range(len(scores)), key=lambda i: weights[i])[::-1]
    return _allocate(order, [math.exp(weights[i]) for i in order], width, len(scores))


class CostModel:
    """ETS's integer program for one selection: the coefficients of x (``outcome``), of every
    node kept and every ancestor kept (``node_cost``), of every cluster covered (``coverage``), the
    ancestors of each candidate and the cluster of each (``None`` when coverage is off)."""

    def __init__(self, scores, ancestors, texts, width: int, lambda_c: float, lambda_s: float,
                 temperature: float, cluster_of):
        N = len(scores)
        self.N = N
        self.ancestors = sorted({a for anc in ancestors for a in anc}, key=str)
        self.under = [[i for i in range(N) if a in ancestors[i]] for a in self.ancestors]  # leaves of each branch
        n = rebase_allocation(scores, width, temperature)
        self.outcome = [x / sum(n) for x in n] if sum(n) else [0.0] * N
        lam_c = 1e-4 if lambda_c == 0 else -lambda_c
        self.node_cost = lam_c / (len(self.ancestors) + N)
        self.clusters = None
        self.coverage = 0.0
        if lambda_s > 0 and N > 1 and len(set(texts)) > 1:
            labels = cluster_of(texts)
            K = len(set(labels))
            names = sorted(set(labels))
            self.clusters = [[i for i in range(N) if labels[i] == k] for k in names]
            self.coverage = lambda_s / K

    def objective(self, keep) -> float:
        kept_ancestors = sum(any(keep[i] for i in under) for under in self.under)
        value = sum(o for o, k in zip(self.outcome, keep) if k) + self.node_cost * (kept_ancestors + sum(keep))
        if self.clusters is not None:
            value += self.coverage * sum(any(keep[i] for i in members) for members in self.clusters)
        return value

    def solve_brute(self) -> list[bool]:
        """Every non-empty subset, the first best in the order of ``itertools.product``."""
        N = self.N
        subsets = np.array(list(itertools.product([0, 1], repeat=N))[1:], dtype=bool)
        value = subsets.astype(float) @ np.array(self.outcome) + self.node_cost * subsets.sum(1)
        if self.under:
            incidence = np.zeros((len(self.under), N), dtype=bool)
            for j, under in enumerate(self.under):
                incidence[j, under] = True
            value = value + self.node_cost * (subsets.astype(int) @ incidence.T.astype(int) > 0).sum(1)
        if self.clusters is not None:
            member = np.zeros((len(self.clusters), N), dtype=bool)
            for k, members in enumerate(self.clusters):
                member[k, members] = True
            value = value + self.coverage * (subsets.astype(int) @ member.T.astype(int) > 0).sum(1)
        return subsets[int(np.argmax(value))].tolist()

    def solve_milp(self) -> list[bool]:
        """The program itself (variables x, y, c, all binary) with scipy's HiGHS."""
        try:
            from scipy.optimize import Bounds, LinearConstraint, milp
        except ImportError:
            raise ValueError("ets: solver milp needs scipy (pip install -e .[search]); solver brute does not") from None
        N, M = self.N, len(self.under)
        K = 0 if self.clusters is None else len(self.clusters)
        c = np.concatenate([np.array(self.outcome) + self.node_cost, np.full(M, self.node_cost),
                            np.full(K, self.coverage)])
        rows, lower, upper = [], [], []

        def constraint(coef, lo, hi):
            row = np.zeros(N + M + K)
            for idx, value in coef:
                row[idx] = value
            rows.append(row)
            lower.append(lo)
            upper.append(hi)

        for j, under in enumerate(self.under):
            constraint([(N + j, 1.0)] + [(i, -1.0) for i in under], -np.inf, 0.0)  # y_j <= Σ x_i
            for i in under:
                constraint([(N + j, 1.0), (i, -1.0)], 0.0, np.inf)  # y_j >= x_i
        constraint([(i, 1.0) for i in range(N)], 1.0, np.inf)  # keep at least one node
        for k, members in enumerate(self.clusters or []):
            constraint([(N + M + k, 1.0)] + [(i, -1.0) for i in members], -np.inf, 0.0)  # c_k <= Σ x_i
        result = milp(-c, constraints=LinearConstraint(np.array(rows), lower, upper),
                      integrality=np.ones(N + M + K), bounds=Bounds(0, 1))
        if not result.success:
            raise RuntimeError(f"ets: the selection program was not solved ({result.message})")
        return [bool(round(v)) for v in result.x[:N]]


def exact_clusters(texts) -> list[int]:
    """One cluster per distinct text."""
    names = {t: k for k, t in enumerate(dict.fromkeys(texts))}
    return [names[t] for t in texts]


def ngram_clusters(texts, threshold: float = 0.05) -> list[int]:
    """Character 1-3-gram count vectors, average linkage on cosine distance, cut at ``threshold``
    (rebase.py lines 474-476 with another embedding)."""
    try:
        from scipy.cluster.hierarchy import fcluster, linkage
    except ImportError:
        raise ValueError("ets: clusters ngram needs scipy (pip install -e .[search]); clusters exact does not") from None
    grams = sorted({t[i:i + n] for t in texts for n in (1, 2, 3) for i in range(len(t) - n + 1)})
    if not grams:
        return exact_clusters(texts)
    index = {g: j for j, g in enumerate(grams)}
    vectors = np.zeros((len(texts), len(grams)))
    for i, t in enumerate(texts):
        for n in (1, 2, 3):
            for k in range(len(t) - n + 1):
                vectors[i, index[t[k:k + n]]] += 1
    vectors[vectors.sum(1) == 0, 0] = 1e-9  # an empty step: a direction of its own
    labels = fcluster(linkage(vectors, method="average", metric="cosine"), threshold, criterion="distance") - 1
    return labels.tolist()


@register("rollout", "ets", paper="ETS, Hooper et al., arXiv:2502.13575 (code SqueezeAILab/ETS rebase.py)")
class ETS(TreeRollout):
    def __init__(self, lambda_c: float = 1.0, lambda_s: float = 1.5, softmax_temperature: float = 0.2,
                 step_tokens: int | None = 4, step_marker: str | None = None, max_depth: int = 25,
                 value: str = "rollout", value_rollouts: int = 2, prior: float = 0.5, clusters: str = "exact",
                 cluster_threshold: float = 0.05, solver: str = "auto"):
        if value not in ("rollout", "verifier"):
            raise ValueError(f"value must be rollout (a Monte-Carlo estimate) or verifier, got {value!r}")
        if clusters not in ("exact", "ngram"):
            raise ValueError(f"clusters must be exact or ngram, got {clusters!r}")
        if solver not in ("auto", "brute", "milp"):
            raise ValueError(f"solver must be auto, brute or milp, got {solver!r}")
        if softmax_temperature <= 0:
            raise ValueError(f"softmax_temperature must be > 0, got {softmax_temperature}")
        if lambda_c < 0 or lambda_s < 0:
            raise ValueError(f"lambda_c and lambda_s must be >= 0, got {lambda_c} and {lambda_s}")
        if value_rollouts < 1 or max_depth < 1:
            raise ValueError(f"value_rollouts and max_depth must be >= 1, got {value_rollouts} and {max_depth}")
        self.lambda_c, self.lambda_s, self.temperature = lambda_c, lambda_s, softmax_temperature
        self.step_tokens, self.step_marker, self.max_depth = step_tokens, step_marker, max_depth
        self.value, self.value_rollouts, self.prior = value, value_rollouts, prior
        self.clusters, self.cluster_threshold, self.solver = clusters, cluster_threshold, solver

    def segments(self, tokenizer):
        return step_segments(tokenizer, self.step_tokens, self.step_marker)

    def select(self, scores, ancestors, texts, width: int) -> tuple[list[bool], list[int]]:
        """Which candidates to keep, and the width of each (rebase.py lines 373-569)."""
        cluster_of = exact_clusters if self.clusters == "exact" else (
            lambda t: ngram_clusters(t, self.cluster_threshold))
        model = CostModel(scores, ancestors, texts, width, self.lambda_c, self.lambda_s, self.temperature,
                          cluster_of)
        brute = self.solver == "brute" or (self.solver == "auto" and len(scores) <= BRUTE_FORCE_MAX)
        keep = model.solve_brute() if brute else model.solve_milp()
        return keep, kept_widths(scores, keep, width, self.temperature)

    def grow(self, engine, trees, counts, verify):
        width = list(counts)
        for tree in trees:
            tree.root.value = 1.0  # the root's score (rebase.py line 113); it is the only candidate at depth 0
        frontier = [[tree.root] for tree in trees]
        answers = [[] for _ in trees]
        depth = 0
        while True:
            requests = []
            for t, nodes in enumerate(frontier):
                candidates = []
                for node in nodes:
                    if node.finished:
                        width[t] -= 1
                        answers[t].append(node)
                    else:
                        candidates.append(node)
                if width[t] <= 0 or not candidates:
                    for node in candidates:
                        engine.close(node)
                    continue
                if depth >= self.max_depth:  # out of depth: each width unit runs to the end
                    widths = _spread(width[t], len(candidates))
                else:
                    keep, widths = self.select([n.value for n in candidates],
                                               [{a.index for a in [n.tree.root] + n.path()[:-1]} for n in candidates],
                                               [engine.node_text(n) for n in candidates], width[t])
                for node, w in zip(candidates, widths):
                    if w > 0:
                        requests.append((node, w))
                    else:
                        engine.close(node)
            if not requests:
                break
            children = engine.grow(requests, through=depth >= self.max_depth)
            for node, _ in requests:
                engine.close(node)  # ETS continues a node once; its prefix stays while its children need it
            new = [c for cs in children for c in cs]
            if depth >= self.max_depth:
                new = [c.leaves()[0] for c in new]
            self._score(engine, new, verify)
            frontier = [[] for _ in trees]
            position = {id(tree): t for t, tree in enumerate(trees)}
            for node in new:
                frontier[position[id(node.tree)]].append(node)
            depth += 1
        return answers

    def _score(self, engine, nodes, verify) -> None:
        """The stand-in for the process reward model: the verifier on finished responses; on the
        others a Monte-Carlo value (``value: rollout``) or ``prior``."""
        done = [n for n in nodes if n.finished]
        for node, reward in zip(done, verify(done)):
            node.value = reward
        open_nodes = [n for n in nodes if not n.finished]
        if self.value == "verifier" or not open_nodes:
            for node in open_nodes:
                node.value = self.prior
            return
        probes = engine.probe(open_nodes, self.value_rollouts)
        rewards = verify([leaf for leaves in probes for leaf in leaves])
        for i, node in enumerate(open_nodes):
            part = rewards[i * self.value_rollouts:(i + 1) * self.value_rollouts]
            node.value = sum(part) / len(part)


def _spread(width: int, n: int) -> list[int]:
    return [width // n + (1 if i < width % n else 0) for i in range(n)]
