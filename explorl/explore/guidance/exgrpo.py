"""``exgrpo``: ExGRPO, Learning to Reason from Experience (arXiv:2510.02245).

Authors' code: ElliottYan/LUFFY ``ExGRPO/exgrpo/verl/verl/mix_src/`` —
``mix_trainer_experience.py`` (collection, retirement, the start switch at L538),
``experience/experience_trainer_ops.py`` (``collect_experience_entries``,
``replace_recorded_old_log_probs``, ``cleanup_experience_buckets``),
``experience/weighted_bucket_sampler.py`` (``_normal_mapping``, the multinomial draw),
``experience/experience_helpers.py`` (``compute_postcal_metrics``, ``select_best_experiences``),
``experience/experience_collate_fn.py`` (the experience share of a batch),
``mix_core_alg.py::compute_token_on_off_policy_loss`` (the off-policy weight);
defaults from ``ExGRPO/exp_scripts/run_exgrpo.sh``. No external traces: the off-policy rows are the
policy's own past correct answers.

**Buffer** (``observe``, from the whole batch in ``stats.extras["batch"]``). For every group, k is
the number of correct rows (reward ≥ ``success_threshold``) among the policy's own rows and the
replayed row (the code counts every row of the uid):

- all correct: the problem is retired (the code's ``skip_uid_set``): its entry is removed and it is
  never stored or replayed again;
- ``experience_lbound`` < k ≤ ``experience_rbound`` (code 0 < k ≤ 7 with G = 8; ``None`` = G − 1,
  the same bound scaled to the group size): the problem's bucket becomes k (its latest success
  count) and each correct on-policy row not stored yet (same token ids) is appended with its token
  ids and the log-probs recorded when it was sampled;
- k = 0: nothing changes (the code leaves the bucket as it was).

The entry holds the ``Problem`` itself and is keyed by its id (the code keys by the question's
dataframe uid): the buffer is what revisits a problem, so it works on a procedural source whose
curriculum never draws the same problem twice. Every stored value is a tensor, a number, a string,
a list, a dict, a set or a ``Problem`` (checkpoint-safe, ``state_keys``).

**Recorded log-probs.** ``recorded: behaviour`` (default) keeps ``behaviour_logp``, the log-prob
under the distribution the token was sampled from. The code stores the actor's ``old_log_probs``
(π_old at temperature 1), which equal it at the code's temperature-1 sampling; ``recorded: old``
keeps explorl's ``old_logp`` instead (they differ only under tempered or truncated decoding).

**Start.** Collection and replay switch on (once, for good) after the first step whose own-row
solve rate (correct rows / rows) exceeds ``experience_start_sratio`` = 0.35 (the code's
``batch/solved``). As in the code the buffer is filled only after the switch, so the first replay
comes two steps later; ``collect_before_start: true`` fills it from the first step.

**Sampling** (``guide``). Buckets weigh N(k; G/2, 1) = exp(−(k − G/2)²/2)/√(2π) (``normal``;
``linear`` k/G, ``sqrt`` √(k/G) and ``linear_clip`` are the code's other mappings) over the
non-empty buckets of eligible problems; the per-bucket counts are a multinomial draw (made with the
step's ``ctx.rng``); a bucket drawn more often than it holds gives the excess to the others in
proportion to their weights; problems are drawn without replacement within a bucket. Within a
problem the replayed trajectory is the one with the lowest mean token entropy under the current
policy (``exp_metric: ent``, ``exp_select_mode: argmin``; ``ppl`` and ``argmax`` and ``random``
as in the code). The code's ``compute_postcal_metrics`` averages over the positions where the
response equals the pad token (``mask = ~(responses != pad)``) and indexes the last chunk's
responses for every chunk; the mean over the trajectory's own tokens is the documented intent and
what is implemented here.

**Batch: experience groups are added, not swapped in.** The code builds each batch of B prompts
from ⌊B·ratio⌋ experience questions and B − ⌊B·ratio⌋ fresh ones before anything is generated.
Here the curriculum's problems are already sampled when ``guide`` runs, and dropping groups the
policy generated would spend their tokens for nothing. So the experience problems are **extra
groups**: n_exp = min(eligible, ⌊P·ratio/(1 − ratio)⌋) for the P groups of the batch (with ratio
0.5, as many as the batch holds), so experience problems are ``experience_ratio`` of the
problems trained on, as in the code. Each gets G − 1 fresh rollouts (``ctx.sample``, counted in the
token budget) plus its stored trajectory as a ``REPLAYED`` row (the code's 7 fresh + 1 prefix
slot), G being the batch's most common group size. A step with replay therefore generates more
tokens than one without (about (2G − 1)/G times at ratio 0.5): compare methods at equal
``train.max_tokens``, or halve ``train.problems_per_step`` to keep the problems per step. Problems
already in the batch are not drawn as experience problems.

**Loss on replayed tokens** (``row_loss``, rows of kind ``REPLAYED``)::

    ℓ_t = −Â · f(π_θ(e_t) / μ_b(e_t)),   f(x) = x / (x + γ),   γ = 0.1

with μ_b the recorded behaviour probability (``exp_is_correct: true``, the code's
``replace_recorded_old_log_probs``; ``false`` uses π_old recomputed now, which is what the code
does when no record exists). f is computed as sigmoid(log π_θ − log μ_b − log γ), the same value
without overflow. Â is the group advantage over the mixed group (the replayed row included).

**Everything else as LUFFY** (``configs/recipes/exgrpo.yaml``): no PPO clip on on-policy tokens
(``ppo_clip`` with ``clip_ratio_low: 1.0, clip_ratio_high: 1.0e9, clip_ratio_c: null``), no std
in the advantage (``grpo`` with ``scale_by_std: false``), Σ_tokens/L_max
(``train.loss_agg_mode: seq-mean-token-sum-norm``), entropy 0.001, no KL. The code also masks
groups that are all wrong or all right out of the loss (``valid_mask``); with mean-centred
advantages their advantage is 0 anyway, and no such filter is applied here.
"""
from __future__ import annotations

import math
from collections import Counter

import torch

from explorl.batch import ON_POLICY, PREFIX, REPLAYED, join
from explorl.explore.acted import Acted
from explorl.explore.base import Guidance
from explorl.explore.objective.ppo_clip import masked_mean
from explorl.registry import register

WEIGHTINGS = ("normal", "linear", "sqrt", "linear_clip")


def bucket_weight(k: int, group_size: int, method: str = "normal") -> float:
    """The code's ``WeightedBucketSampler`` mappings of a success count k for groups of G rollouts."""
    if method == "normal":  # N(k; G/2, 1)
        return math.exp(-((k - group_size / 2) ** 2) / 2) / math.sqrt(2 * math.pi)
    if method == "linear":
        return k / group_size
    if method == "sqrt":
        return math.sqrt(k / group_size)
    if method == "linear_clip":
        return 0.5 if k > group_size / 2 else k / group_size
    raise ValueError(f"unknown bucket weighting {method!r} (valid: {', '.join(WEIGHTINGS)})")


def sample_buckets(buckets: dict[int, list[str]], n: int, group_size: int, rng, method: str = "normal") -> list[str]:
    """Up to ``n`` distinct items from ``buckets`` (k → items): per-bucket counts from a multinomial
    draw over the normalised bucket weights, a bucket's excess over its size handed to the buckets
    with room one at a time in proportion to their weights, items drawn without replacement within
    a bucket (the code's ``WeightedBucketSampler.sample``)."""
    names = sorted(k for k, items in buckets.items() if items)
    weights = [bucket_weight(k, group_size, method) for k in names]
    if not names or n <= 0 or sum(weights) <= 0:
        return []
    drawn = Counter(rng.choices(names, weights=weights, k=n))
    counts = {k: min(drawn[k], len(buckets[k])) for k in names}
    excess = n - sum(counts.values())
    while excess > 0:
        room = [(k, w) for k, w in zip(names, weights) if counts[k] < len(buckets[k]) and w > 0]
        if not room:
            break
        k = rng.choices([k for k, _ in room], weights=[w for _, w in room], k=1)[0]
        counts[k] += 1
        excess -= 1
    out = []
    for k in names:
        items = sorted(buckets[k])
        out += items if counts[k] >= len(items) else rng.sample(items, counts[k])
    return out


def pick_per_group(values: torch.Tensor, group: torch.Tensor, mode: str = "argmin") -> list[int]:
    """For each group, the row with the smallest (``argmin``) or largest (``argmax``) value (first on ties)."""
    chosen = []
    for g in group.unique(sorted=True).tolist():
        rows = (group == g).nonzero().squeeze(-1)
        vals = values[rows]
        chosen.append(int(rows[int(vals.argmin() if mode == "argmin" else vals.argmax())]))
    return chosen


def trajectory_metric(rows, metric: str) -> torch.Tensor:
    """Per row of a scored batch: mean token entropy (``ent``) or perplexity (``ppl``) under the current policy."""
    n = rows.mask.sum(-1).clamp_min(1)
    if metric == "ent":
        return (rows.entropy * rows.mask).sum(-1) / n
    return torch.exp(-(rows.old_logp * rows.mask).sum(-1) / n)


def replay_weight(logp: torch.Tensor, anchor: torch.Tensor, gamma: float) -> torch.Tensor:
    """f(π_θ/μ) = r/(r + γ) with r = exp(logp − anchor), as sigmoid(logp − anchor − log γ)."""
    return torch.sigmoid(logp - anchor - math.log(gamma))


@register("guidance", "exgrpo", paper="ExGRPO: Learning to Reason from Experience, arXiv:2510.02245; code "
          "ElliottYan/LUFFY ExGRPO/exgrpo/verl/verl/mix_src/{mix_trainer_experience.py, experience/*, mix_core_alg.py}")
class ExGRPO(Guidance):
    engaged_when = (Acted("guide/exgrpo_experience_problems", ">=", 0.5, reduce="share", step_above=0,
                          what="replayed rows on at least half the steps"),)
    handles = frozenset({REPLAYED})
    state_keys = ("buffer", "retired", "mixing")

    def __init__(self, experience_ratio: float = 0.5, experience_start_sratio: float = 0.35,
                 experience_lbound: int = 0, experience_rbound: int | None = None, bucket_weighting: str = "normal",
                 exp_metric: str = "ent", exp_select_mode: str = "argmin", exp_is_correct: bool = True,
                 gamma: float = 0.1, recorded: str = "behaviour", collect_before_start: bool = False,
                 success_threshold: float = 1.0):
        if not 0.0 <= experience_ratio < 1.0:
            raise ValueError(f"guidance exgrpo: experience_ratio must be in [0, 1), got {experience_ratio}")
        if bucket_weighting not in WEIGHTINGS:
            raise ValueError(f"guidance exgrpo: bucket_weighting must be one of {', '.join(WEIGHTINGS)}, "
                             f"got {bucket_weighting!r}")
        if exp_metric not in ("ent", "ppl", "random"):
            raise ValueError(f"guidance exgrpo: exp_metric must be ent, ppl or random, got {exp_metric!r}")
        if exp_select_mode not in ("argmin", "argmax"):
            raise ValueError(f"guidance exgrpo: exp_select_mode must be argmin or argmax, got {exp_select_mode!r}")
        if recorded not in ("behaviour", "old"):
            raise ValueError(f"guidance exgrpo: recorded must be behaviour or old, got {recorded!r}")
        if gamma <= 0:
            raise ValueError(f"guidance exgrpo: gamma must be > 0, got {gamma}")
        if experience_rbound is not None and experience_rbound <= experience_lbound:
            raise ValueError("guidance exgrpo: experience_rbound must be > experience_lbound")
        self.ratio, self.start_sratio = experience_ratio, experience_start_sratio
        self.lbound, self.rbound, self.weighting = experience_lbound, experience_rbound, bucket_weighting
        self.metric, self.select_mode, self.is_correct = exp_metric, exp_select_mode, exp_is_correct
        self.gamma, self.recorded, self.collect_before_start = gamma, recorded, collect_before_start
        self.success_threshold = success_threshold
        # problem id -> {"problem": Problem, "k": latest success count, "ids": [LongTensor], "logp": [FloatTensor]}
        self.buffer: dict[str, dict] = {}
        self.retired: set[str] = set()
        self.mixing = False

    # ---- the buffer ------------------------------------------------------------------------
    def eligible(self, exclude=()) -> dict[int, list[str]]:
        """Bucket k → ids of the stored problems that can be replayed now."""
        buckets: dict[int, list[str]] = {}
        for pid, entry in self.buffer.items():
            if pid not in self.retired and entry["ids"] and pid not in exclude:
                buckets.setdefault(int(entry["k"]), []).append(pid)
        return buckets

    def collect(self, batch) -> dict[str, float]:
        kind = batch.row_kind
        counted = (kind == ON_POLICY) | (kind == PREFIX) | (kind == REPLAYED)
        correct = batch.rewards >= self.success_threshold
        stored = 0
        for g, problem in enumerate(batch.problems):
            rows = ((batch.group == g) & counted).nonzero().squeeze(-1)
            if len(rows) == 0 or problem.prefix:
                continue
            k, total = int(correct[rows].sum()), len(rows)
            if k == total:
                self.retired.add(problem.id)
                self.buffer.pop(problem.id, None)
                continue
            rbound = self.rbound if self.rbound is not None else total - 1
            if problem.id in self.retired or not self.lbound < k <= rbound:
                continue
            entry = self.buffer.setdefault(problem.id, {"problem": problem, "k": k, "ids": [], "logp": []})
            entry["k"] = k
            source = batch.behaviour_logp if self.recorded == "behaviour" else batch.old_logp
            for r in rows.tolist():
                if kind[r] != ON_POLICY or not correct[r]:
                    continue
                n = int(batch.mask[r].sum())
                ids = batch.response_ids[r, :n].clone()
                if any(len(s) == n and torch.equal(s, ids) for s in entry["ids"]):
                    continue
                entry["ids"].append(ids)
                entry["logp"].append(source[r, :n].float().clone())
                stored += 1
        return {"guide/exgrpo_stored": float(stored)}

    def observe(self, stats):
        own = [r for rewards in stats.rewards for r in rewards]
        solved = sum(r >= self.success_threshold for r in own) / len(own) if own else 0.0
        metrics = {}
        batch = stats.extras.get("batch")
        if batch is not None and (self.mixing or self.collect_before_start):
            metrics.update(self.collect(batch))
        if not self.mixing and solved > self.start_sratio:
            self.mixing = True
        metrics.update({"guide/exgrpo_buffer_problems": float(len(self.buffer)),
                        "guide/exgrpo_buffer_trajectories": float(sum(len(e["ids"]) for e in self.buffer.values())),
                        "guide/exgrpo_retired": float(len(self.retired)), "guide/exgrpo_mixing": float(self.mixing)})
        return metrics

    # ---- the batch ---------------------------------------------------------------------------
    def guide(self, batch, ctx):
        if not self.mixing or self.ratio == 0:
            return batch, {}
        P = len(batch.problems)
        G = Counter(batch.counts).most_common(1)[0][0]
        if G < 2:
            raise ValueError("guidance exgrpo: groups of one rollout leave no room for fresh rollouts next to the "
                             "replayed one")
        in_batch = {p.id for p in batch.problems}
        want = int(P * self.ratio / (1 - self.ratio) + 1e-9)
        chosen = sample_buckets(self.eligible(in_batch), want, G, ctx.rng, self.weighting)
        if not chosen:
            return batch, {"guide/exgrpo_experience_problems": 0.0}
        problems = [self.buffer[pid]["problem"] for pid in chosen]
        counts = [len(self.buffer[pid]["ids"]) for pid in chosen]
        ids = [t.tolist() for pid in chosen for t in self.buffer[pid]["ids"]]
        logp = [t for pid in chosen for t in self.buffer[pid]["logp"]]
        stored = ctx.score(problems, counts, token_ids=ids, behaviour_logp=logp, kind=REPLAYED)
        if self.metric == "random":
            keep, start = [], 0
            for c in counts:
                keep.append(start + ctx.rng.randrange(c))
                start += c
        else:
            keep = pick_per_group(trajectory_metric(stored, self.metric), stored.group, self.select_mode)
        drop = sorted(set(range(stored.size)) - set(keep))
        replayed = stored.drop_rows(drop) if drop else stored
        fresh = ctx.sample(problems, [G - 1] * len(problems))
        out = join([batch, fresh]).add_rows(replayed, [P + i for i in range(len(problems))])
        return out, {"guide/exgrpo_experience_problems": float(len(problems)),
                     "guide/exgrpo_replayed_reward": float(replayed.rewards.mean())}

    def row_loss(self, ctx):
        anchor = ctx.behaviour_logp if self.is_correct else ctx.old_logp
        weight = replay_weight(ctx.logp, anchor, self.gamma)
        loss = -ctx.advantages * weight
        kind = ctx.kind.to(ctx.mask.device) if ctx.kind is not None else None
        mask = ctx.mask * (kind == REPLAYED)[:, None].to(ctx.mask.dtype) if kind is not None else ctx.mask
        return loss, {"loss/exgrpo_weight_mean": masked_mean(weight.detach(), mask),
                      "loss/exgrpo_ratio_mean": masked_mean(torch.exp((ctx.logp - anchor).detach() * mask), mask)}
