"""``rex_rag``: REX-RAG, Reasoning Exploration with Policy Correction in Retrieval-Augmented
Generation (arXiv:2508.08149).

Authors' code: MiliLab/REX-RAG — ``search_r1/llm_agent/generation.py`` (``clone_rollout`` and
``execute_predictions``: a wrong answer is cloned with probability ``revision_prob``, the answer
removed, a probe appended, the policy continues), ``search_r1/llm_agent/thinking_prompts.py`` (the
probes, ``revision_prompts``), ``verl/trainer/ppo/ray_trainer.py`` (``reorder_batch`` ~L614: the
filter; ~L1529: the keep ratio, α, the accuracy), ``verl/workers/actor/dp_actor.py`` ~L447–497 (the
mixture behaviour policy), ``verl/workers/actor/exploration_distribution.py`` (``PrefixIndex``:
the probe trie); defaults from ``scripts/search-r1-sgl/run_grpo_sglang_fsdp.sh``.

**Clones** (``guide``, before advantages). Each wrong on-policy rollout (reward <
``success_threshold``) is cloned with probability ``clone_prob`` (the script's ``revision_prob`` =
20 draws ``randint(0, 100) < 20``: 20/101 ≈ 0.2). The clone keeps the first m tokens of the wrong
response, m = ⌊u·L⌋ with u ~ U[``truncate_min``, ``truncate_max``] from ``ctx.rng`` and L the
response length without its stop token (the code cuts just before the final answer action of a
multi-turn search rollout; a one-turn response has no such point, so the cut is a random share of
it), then one probe drawn uniformly from ``probes``. The policy continues from there
(``dataclasses.replace(problem, prefix=<truncated response + probe>)`` and ``ctx.sample``; the
continuation's tokens count toward the budget, the copied prefix was counted with its original
and the probe is not generated). The verifier judges prefix + probe + continuation.

**Filter.** Of the clones, ⌊B·G·keep_ratio⌋ are kept (B·G: the batch's on-policy rollouts), those
with the highest mean π_old log-prob over their probe tokens (in context, under the current policy;
ties in a random order from ``ctx.rng``). ``keep_ratio`` is an EWMA (``ewma`` 0.1, pandas
``adjust=False``) of the kept clones' success rate, started at 0.08 and updated every step (0 when no
clone is kept, as in the code, so a run whose clones keep failing stops cloning once
⌊B·G·keep_ratio⌋ reaches 0; ``min_keep_ratio`` keeps a floor). No continuation is sampled when
⌊B·G·keep_ratio⌋ = 0 (the code samples them and drops them all: the same batch, fewer tokens).

**Where the clone sits: the code's form.** A kept clone is a row of its original problem's group
whose response is [truncated wrong response, probe, continuation] under the original prompt, so the
group advantage is over originals and clones together (the code gives clones the original's uid)
and every token of the clone carries gradient, as in the code. These rows are built with
``ctx.score`` (token ids copied, π_old and the entropy from a forward pass) and marked ``PREFIX``
(the policy's continuation of a prefix; here the prefix sits in the response, not in the prompt).
The continuation was sampled conditioned on the prompt text followed by the prefix text; with a
tokenizer whose tokens can merge across that boundary (BPE) the row's token ids may differ from
the tokenization the sampler saw; with the testbed's character tokenizer they are the same.
``train_on: continuation`` gives the other form: the same rows with ``loss_mask`` 0 on the prefix
and probe tokens (what a prefix placed in the prompt would give: only the policy's own continuation
is trained, at ratio π_θ/π_old, as the mixture leaves continuation tokens exactly there).

**Policy correction** (the anchor of the recipe's PPO term, π_old, is replaced by the mixture
inside the loss, as the code's actor replaces ``old_log_prob`` in ``update_policy`` after verl has
recomputed it; ``augment``, after advantages, records α, the error rate and each clone's prefix
length and probe, and ``ratio_anchor`` builds μ_b from the π_old the update holds, so with
``train.recompute_old_logp: true`` it is built on the recomputed π_old, as in the code)::

    μ_b(t) = (1 − α) π_old(t) + α μ_probe(t),    α = kept clones / rows of the batch
    μ_probe: 0 on original rollouts; on a clone: π_old · err^(−1/m) on the m prefix tokens
             (err = 1 − accuracy of the original rollouts), 1 on the first probe token, the
             probe-trie frequency q(token | earlier probe tokens) on later probe tokens (over the
             ``probes`` list, each probe counted once), π_old on the continuation
    ratio = π_θ / μ_b, then the recipe's clipped PPO loss (clip 0.2/0.2)

With μ_probe = 0 the original rollouts' ratio is π_θ / ((1 − α) π_old): every original is scaled by
1/(1 − α) and clipped at that scale (a quirk of the code, kept as the default,
``original_correction: mixture``); ``original_correction: none`` leaves original rollouts at
π_θ/π_old. On a clone's prefix μ_b = π_old·(1 − α + α·err^(−1/m)) can exceed 1, as in the code.
Rows other guidance methods add are left alone, except on-policy rows, which are originals.
Objectives reading ``old_logp`` for another purpose (``ppo_clip``'s ``tis_cap``) see the mixture;
the batch's ``old_logp`` itself keeps π_old (what ``observe`` and the other plug-ins read).

**Probes.** Probes must survive the policy's tokenizer (checked at the first step). The code's
probes ("<think> Perhaps I've overlooked critical points or slipped up in my logic." …) use
characters the testbed alphabet lacks (upper case, ``'``). The default list is short, lower-case
text in ``0123456789+-*/=(),:;<>?!. abcdefghijklmnopqrstuvwxyz``, for sources whose verifier reads
the final answer out of a longer response (``boxed``, ``last_number``, ``answer_tags``
extractors: math data). The testbed's procedural sources judge the whole completion by exact match
or as one expression, so any probe text makes a clone wrong: the recipe
``configs/recipes/rex_rag.yaml`` sets ``probes: [""]`` there (truncate and resample: a clone is the
policy's second attempt from a random point of its wrong answer; its ranking is then random, its
μ_probe acts on the prefix tokens only).
"""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import torch

from explorl.batch import ON_POLICY, PREFIX
from explorl.explore.acted import Acted
from explorl.explore.base import Guidance
from explorl.registry import register

#: Probe texts for math data (the testbed's alphabet; see the module docstring).
MATH_PROBES = [" wait, let me check that again. ", " hmm, i may have made a mistake. let me redo it. ",
               " let me try a different way. "]


def probe_trie(probe_ids: list[list[int]]) -> list[list[float]]:
    """μ_probe of each probe token: 1 on the first, then count(prefix → token) / count(prefix → any)
    over the probes (the code's ``PrefixIndex``)."""
    counts: dict[tuple, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for seq in probe_ids:
        for i in range(1, len(seq)):
            counts[tuple(seq[:i])][seq[i]] += 1
    out = []
    for seq in probe_ids:
        q = [1.0] if seq else []
        for i in range(1, len(seq)):
            after = counts[tuple(seq[:i])]
            q.append(after[seq[i]] / sum(after.values()))
        out.append(q)
    return out


def ewma_keep_ratio(keep_ratio: float, success: float, alpha: float) -> float:
    """One step of pandas ``ewm(alpha, adjust=False)``: (1 − α)·previous + α·new."""
    return (1 - alpha) * keep_ratio + alpha * success


def rank_clones(scores: list[float], keep: int, rng) -> list[int]:
    """Indices of the ``keep`` highest scores (ties in a random order from ``rng``), in index order."""
    order = list(range(len(scores)))
    rng.shuffle(order)
    order.sort(key=lambda i: -scores[i])
    return sorted(order[:keep])


def mixture_logp(old_logp: torch.Tensor, prefix_len: int, probe_mu: list[float], alpha: float,
                 error_rate: float) -> torch.Tensor:
    """log μ_b over one clone row's tokens (``old_logp`` of its response tokens, 1-D)."""
    pi = old_logp.double().exp()
    mu = pi.clone()
    m, k = prefix_len, len(probe_mu)
    if m > 0:
        mu[:m] = pi[:m] / error_rate ** (1.0 / m)
    if k:
        mu[m:m + k] = torch.tensor(probe_mu, dtype=mu.dtype)
    return torch.log((1 - alpha) * pi + alpha * mu).to(old_logp.dtype)


@register("guidance", "rex_rag", paper="REX-RAG: Reasoning Exploration with Policy Correction in Retrieval-Augmented Generation, "
          "arXiv:2508.08149; code MiliLab/REX-RAG verl/workers/actor/dp_actor.py, verl/trainer/ppo/ray_trainer.py, "
          "search_r1/llm_agent/generation.py")
class RexRAG(Guidance):
    engaged_when = (Acted("guide/rex_kept", ">", 0, reduce="sum", what="kept probe rows > 0"),)
    state_keys = ("keep_ratio",)

    def __init__(self, probes: list | None = None, clone_prob: float = 0.2, keep_ratio: float = 0.08,
                 ewma: float = 0.1, min_keep_ratio: float = 0.0, truncate_min: float = 0.0, truncate_max: float = 1.0,
                 train_on: str = "clone", original_correction: str = "mixture", success_threshold: float = 1.0):
        probes = list(MATH_PROBES if probes is None else probes)
        if not probes or not all(isinstance(p, str) for p in probes):
            raise ValueError("guidance rex_rag: probes must be a non-empty list of strings (\"\" for no probe text)")
        if not 0 <= clone_prob <= 1 or not 0 <= keep_ratio <= 1 or not 0 < ewma <= 1 or not 0 <= min_keep_ratio <= 1:
            raise ValueError("guidance rex_rag: clone_prob, keep_ratio and min_keep_ratio must be in [0, 1], "
                             "ewma in (0, 1]")
        if not 0 <= truncate_min <= truncate_max <= 1:
            raise ValueError(f"guidance rex_rag: need 0 <= truncate_min <= truncate_max <= 1, got "
                             f"{truncate_min}, {truncate_max}")
        if train_on not in ("clone", "continuation"):
            raise ValueError(f"guidance rex_rag: train_on must be clone or continuation, got {train_on!r}")
        if original_correction not in ("mixture", "none"):
            raise ValueError(f"guidance rex_rag: original_correction must be mixture or none, got "
                             f"{original_correction!r}")
        self.probes, self.clone_prob, self.keep_ratio, self.ewma = probes, clone_prob, keep_ratio, ewma
        self.min_keep_ratio, self.truncate = min_keep_ratio, (truncate_min, truncate_max)
        self.train_on, self.original_correction, self.success_threshold = train_on, original_correction, success_threshold
        self._probe_ids = None
        self._pending: dict[tuple, list] = {}  # this step's kept clones: (problem id, token ids) -> [(m, μ_probe)]
        self._error_rate = 1.0
        self._plan: dict | None = None  # this step's correction, by row of the batch (augment -> ratio_anchor)

    def probe_tokens(self, tokenizer) -> list[list[int]]:
        if self._probe_ids is None:
            ids = []
            for probe in self.probes:
                enc = tokenizer(probe, add_special_tokens=False).input_ids if probe else []
                if tokenizer.decode(enc, skip_special_tokens=True) != probe:
                    raise ValueError(f"guidance rex_rag: the probe {probe!r} does not survive the policy's tokenizer "
                                     f"(it comes back as {tokenizer.decode(enc, skip_special_tokens=True)!r}); use "
                                     f"characters the tokenizer encodes")
                ids.append(list(enc))
            self._probe_ids = ids
        return self._probe_ids

    # ---- clones ------------------------------------------------------------------------------
    def guide(self, batch, ctx):
        self._pending, self._plan = {}, None
        engine = ctx.engine
        probe_ids = self.probe_tokens(engine.tokenizer)
        probe_mu = probe_trie(probe_ids)
        kind = batch.row_kind
        original = kind == ON_POLICY
        correct = batch.rewards >= self.success_threshold
        n_orig = int(original.sum())
        accuracy = float(correct[original].float().mean()) if n_orig else 0.0
        self._error_rate = 1.0 - accuracy
        wrong = (original & ~correct).nonzero().squeeze(-1).tolist()
        candidates = [r for r in wrong if ctx.rng.random() < self.clone_prob]
        keep_num = int(n_orig * self.keep_ratio + 1e-9)
        used = self.keep_ratio
        metrics = {"guide/rex_keep_ratio": used, "guide/rex_candidates": float(len(candidates)),
                   "guide/rex_error_rate": self._error_rate}
        success, kept_n = 0.0, 0
        if keep_num > 0 and candidates:
            batch, kept_n, success, m = self._clone(batch, ctx, candidates, keep_num, probe_ids, probe_mu)
            metrics.update(m)
        self.keep_ratio = max(ewma_keep_ratio(self.keep_ratio, success, self.ewma), self.min_keep_ratio)
        metrics.update({"guide/rex_kept": float(kept_n), "guide/rex_clone_success": success})
        return batch, metrics

    def _clone(self, batch, ctx, candidates, keep_num, probe_ids, probe_mu):
        stop_ids = ctx.engine.stop_ids
        tokenizer = ctx.engine.tokenizer
        plan, clone_problems = [], []
        for r in candidates:
            g = int(batch.group[r])
            problem = batch.problems[g]
            n = int(batch.mask[r].sum())
            ids = batch.response_ids[r, :n]
            length = n - 1 if n and bool(torch.isin(ids[-1:], stop_ids).any()) else n
            m = min(int(ctx.rng.uniform(*self.truncate) * length), length)
            j = ctx.rng.randrange(len(self.probes))
            text = tokenizer.decode(ids[:m].tolist(), skip_special_tokens=True)
            plan.append((r, g, m, j))
            clone_problems.append(dataclasses.replace(problem, prefix=problem.prefix + text + self.probes[j]))
        cont = ctx.sample(clone_problems, [1] * len(plan))
        token_ids, behaviour = [], []
        for i, (r, _, m, j) in enumerate(plan):
            n = int(cont.mask[i].sum())
            token_ids.append(batch.response_ids[r, :m].tolist() + probe_ids[j] + cont.response_ids[i, :n].tolist())
            behaviour.append(torch.cat([batch.behaviour_logp[r, :m], torch.zeros(len(probe_ids[j])),
                                        cont.behaviour_logp[i, :n]]))
        rows = ctx.score([batch.problems[g] for _, g, _, _ in plan], [1] * len(plan), token_ids=token_ids,
                         behaviour_logp=behaviour, kind=PREFIX)
        rows.rewards = cont.rewards.clone().float()
        scores = []
        for i, (_, _, m, j) in enumerate(plan):
            k = len(probe_ids[j])
            scores.append(float(rows.old_logp[i, m:m + k].mean()) if k else 0.0)
        kept = rank_clones(scores, keep_num, ctx.rng)
        chosen = rows.select_groups(kept)
        if self.train_on == "continuation":
            grad = chosen.mask.clone()
            for row, i in enumerate(kept):
                _, _, m, j = plan[i]
                grad[row, :m + len(probe_ids[j])] = 0.0
            chosen.loss_mask = grad
        for i in kept:
            _, _, m, j = plan[i]
            key = (batch.problems[plan[i][1]].id, tuple(token_ids[i]))
            self._pending.setdefault(key, []).append((m, probe_mu[j]))
        out = batch.add_rows(chosen, [plan[i][1] for i in kept])
        success = float((chosen.rewards >= self.success_threshold).float().mean())
        metrics = {"guide/rex_probe_logp_all": sum(scores) / len(scores),
                   "guide/rex_probe_logp_kept": sum(scores[i] for i in kept) / len(kept),
                   "guide/rex_all_clone_success": float((rows.rewards >= self.success_threshold).float().mean())}
        return out, len(kept), success, metrics

    # ---- the policy correction -----------------------------------------------------------------
    def augment(self, batch, sampler):
        pending, self._pending, self._plan = self._pending, {}, None
        kind = batch.row_kind
        clones = {}
        for r in (kind == PREFIX).nonzero().squeeze(-1).tolist():
            n = int(batch.mask[r].sum())
            key = (batch.problems[int(batch.group[r])].id, tuple(batch.response_ids[r, :n].tolist()))
            if pending.get(key):
                clones[r] = (n, *pending[key].pop())
        alpha = len(clones) / batch.size
        if alpha == 0:
            return batch, {}
        self._plan = {"size": batch.size, "alpha": alpha, "error_rate": self._error_rate, "clones": clones,
                      "original": (kind == ON_POLICY)[:, None], "mask": batch.mask.clone()}
        return batch, {"guide/rex_alpha": alpha}

    def ratio_anchor(self, ctx):
        """log μ_b on the minibatch's rows, from its π_old (``ctx.old_logp``)."""
        plan = self._plan
        if plan is None:
            return None
        if ctx.rows is None or int(ctx.rows.max()) >= plan["size"]:
            raise RuntimeError("guidance rex_rag: the batch changed after rex_rag's augment; put rex_rag last among "
                               "the guidance methods")
        rows, alpha = ctx.rows.cpu(), plan["alpha"]
        old = ctx.old_logp
        if self.original_correction == "mixture":
            original = plan["original"][rows].to(old.device, old.dtype)
            old = old + math.log(1 - alpha) * plan["mask"][rows].to(old.device) * original
        else:
            old = old.clone()
        for i, r in enumerate(rows.tolist()):
            if r in plan["clones"]:
                n, m, mu = plan["clones"][r]
                old[i, :n] = mixture_logp(ctx.old_logp[i, :n], m, mu, alpha, plan["error_rate"])
        return old

    def observe(self, stats):
        self._pending, self._plan = {}, None
        return {}
