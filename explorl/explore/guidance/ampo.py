"""``ampo``: AMPO, More Than One Teacher: Adaptive Multi-Guidance Policy Optimization for Diverse
Exploration (arXiv:2510.02227).

Authors' code: SII-Enigma/AMPO ``ampo/verl/verl/adaptive_mix_src/mix_dapo_trainer.py``
(``mix_off_policy_rollout``, ~L1290–1660: trigger, selection, replacement),
``ampo/verl/verl/workers/reward_manager/prob.py`` (the comprehension score, ``compute_scoreB``),
``ampo/verl/verl/adaptive_mix_src/mix_core_alg.py`` (the loss), ``exp_scripts/train_ampo.sh``
(the defaults).

**Trigger** (``injection_strategy``). A group is guided when its on-policy rollouts have no
correct one (``adaptive``, the default: the code's success rate #correct/n < 1/n; correct means
reward ≥ 1, the run's pass criterion); ``hybrid`` also guides a successful group with probability
``hybrid_probability`` (0.3, drawn from the step's ``ctx.rng`` once per successful group);
``always`` guides every group.

**Replacement.** In a guided group, min(k, #wrong, #candidates) wrong on-policy rollouts, drawn at
random (``ctx.rng``), are replaced by teacher solutions, k = ``num_off_policy_targets`` (2). The
replaced rollouts were generated and their tokens stay spent (``tokens/step``): the authors'
code also replaces failed rollouts after generation, so this is the paper's cost. Injected
solutions count as correct: their reward is raised to 1 if the verifier gave less (the code sets
it to 1.0), and ``guide/ampo_unverified`` counts those.

**Candidates: several teachers.** The candidate pool of a problem holds up to
``max_available_targets`` (4) distinct solutions taken round-robin over the named teachers (one
from each in turn, so every teacher is represented; ``None``: every teacher of the run). The
recipe defines two countdown solvers with different search orders (``solver_asc``,
``solver_desc``) and ``reference``, so the choice between them is real.

**Selection by comprehension** (``target_selection_strategy: best_k``, the code's
``off_policy_reward_manager='prob'``, which is what orders the pool in the code; the script's
``target_selection_strategy=best_k`` is not read by the trainer). Every candidate is scored by
the current policy (``ctx.score``: one forward pass, its ``old_logp``) and the k with the highest
comprehension score are injected. The code's score (``compute_scoreB``) is the policy's
probability of the gold answer's tokens when it follows the teacher's reasoning, reduced by
``compute_score_name`` (script: ``mean_exp_log_softmax``, the mean token probability). Here:

- the answer span is the solution's **final line** (where worked solutions and the reference
  completion put the answer), the tokens after the teacher's reasoning (the lines before it);
- a one-line solution, which is every testbed teacher's (a countdown expression, an answer), is
  all answer: the score is then the policy's comprehension of the whole solution given the prompt,
  e.g. the mean probability of the tokens of ``3*5+7`` (the stop token is left out);
- the final line is the teacher's own answer rather than the gold one put in its place (the
  code's ``replace_answer_with_gt``): candidates come from verified teachers, so the two agree.

``comprehension`` picks the reduction over the span's token log-probs, as the code's
``compute_score_name``: ``mean_exp_log_softmax`` (mean probability; the script's, the default),
``exp_mean_log_softmax`` (geometric mean; the paper's Eq. 5), ``mean_log_softmax``,
``exp_sum_log_softmax``. Other orders: ``random`` (the code's ``random`` manager) and ``first``
(pool order, the code's ``naive``). Every candidate is read by the policy once, so
``tokens/teacher`` counts the whole pool of the guided groups; ``guide/ampo_teacher_tokens`` counts
the injected rows.

**Loss on teacher tokens**: ℓ_t = −Â · f(π_θ(e_t)), f(x) = x/(x + γ), γ = 0.1 (``gamma``; the
code's ``off_policy_reshape="p_div_p_0.1"``, π_φ ≡ 1); ``target_probs: true`` uses π_θ/π_φ with
π_φ = exp(``behaviour_logp``) (the code's ``target_probs`` path; the paper's π_θ/π_teacher).

``off_policy_loss_impl``: ``token`` (default) or ``seq``. The script sets ``seq``, but the code's
``seq`` path (``compute_token_on_seq_off_policy_loss``) computes per-target sequence means only for
its logged ``off_pg_loss``; what it back-propagates is the per-token loss summed with the
on-policy tokens over Σ/L_max (``pg_losses = combined_off_pg_losses + on_pg_losses·(1−prefix)``),
the same gradient as its ``token`` path. explorl's ``token`` is that gradient, so it is the
default. ``seq`` gives what the option's name describes: each teacher row's loss is the mean over
its own tokens, weighted as one sequence (1/N_seq) whatever the run's aggregation: the per-token
loss is multiplied by L_max/|e| under ``seq-mean-token-sum-norm``, by (Σ tokens/N_seq)/|e| under
``token-mean`` and left as it is under ``seq-mean-token-mean`` (the trainer hands the mode to the
loss context). ``loss/ampo_off_seq_loss`` logs the mean per-sequence loss either way, as the code.

**On-policy tokens** (``configs/recipes/ampo.yaml``): PPO clip 0.2/0.2 with dual clip 10
(``loss_remove_clip=False``, ``clip_ratio_c=10``), group advantage mean-centred over the
augmented group (``norm_adv_by_std_in_grpo=False``: ``grpo`` with ``scale_by_std: false``), Σ/L_max
(``loss_remove_token_mean=True``: ``seq-mean-token-sum-norm``), entropy 0.001, no KL.
"""
from __future__ import annotations

import torch

from explorl.batch import OFF_POLICY, ON_POLICY
from explorl.explore.acted import Acted
from explorl.explore.base import Guidance
from explorl.explore.guidance.demos import luffy_shaping
from explorl.explore.guidance.luffy import clip_weight, off_policy_mask
from explorl.explore.objective.ppo_clip import masked_mean
from explorl.registry import register

INJECTION = ("adaptive", "hybrid", "always")
SELECTION = ("best_k", "random", "first")
COMPREHENSION = ("mean_exp_log_softmax", "exp_mean_log_softmax", "mean_log_softmax", "exp_sum_log_softmax")
LOSS_IMPL = ("token", "seq")


def candidate_pool(ctx, problem, teacher_names, size: int) -> list[tuple[str, str]]:
    """Up to ``size`` distinct ``(teacher, solution)`` pairs, one from each teacher in turn."""
    names = list(teacher_names) if teacher_names else list(ctx.teachers)
    tctx = ctx.extras.get("teacher_context")
    lists = [[(name, text) for text in ctx.teachers[name].solutions(problem, size, tctx)] for name in names]
    out, seen = [], set()
    for i in range(max((len(x) for x in lists), default=0)):
        for found in lists:
            if i < len(found) and found[i][1] not in seen:
                seen.add(found[i][1])
                out.append(found[i])
    return out[:size]


def answer_span(tokenizer, text: str, n_tokens: int) -> tuple[int, int]:
    """Token positions ``[start, n_tokens)`` of the final line of ``text`` (all of it when it has one
    line); ``n_tokens`` is the number of tokens of ``text`` (the stop token excluded)."""
    body = text.rstrip()
    cut = body.rfind("\n")
    if cut < 0 or n_tokens <= 1:
        return 0, n_tokens
    head = len(tokenizer(body[:cut + 1], add_special_tokens=False).input_ids)
    return min(head, n_tokens - 1), n_tokens


def comprehension_score(logp: torch.Tensor, how: str = "mean_exp_log_softmax") -> float:
    """Reduce the policy's log-probs of the answer tokens to one score (the code's
    ``compute_score_name``); higher means the policy follows the solution better."""
    logp = logp.float()
    if how == "mean_exp_log_softmax":
        return float(logp.exp().mean())
    if how == "exp_mean_log_softmax":
        return float(logp.mean().exp())
    if how == "mean_log_softmax":
        return float(logp.mean())
    if how == "exp_sum_log_softmax":
        return float(logp.sum().exp())
    raise ValueError(f"unknown comprehension score {how!r} (valid: {', '.join(COMPREHENSION)})")


def select_targets(scores: list[float], k: int, strategy: str, rng=None) -> list[int]:
    """Indices of the ``k`` candidates to inject: the highest scores first (``best_k``; ties keep
    pool order), a random draw (``random``) or pool order (``first``)."""
    order = list(range(len(scores)))
    if strategy == "best_k":
        order.sort(key=lambda i: -scores[i])
    elif strategy == "random":
        rng.shuffle(order)
    elif strategy != "first":
        raise ValueError(f"unknown target selection {strategy!r} (valid: {', '.join(SELECTION)})")
    return order[:k]


def sequence_mean_scale(ctx) -> torch.Tensor:
    """``(R,)`` factors that turn the run's aggregation of a row's per-token loss into the mean over
    the row's tokens, weighted 1/N_seq (the mode and L_max come from the loss context)."""
    lengths = ctx.mask.sum(-1).clamp_min(1.0)
    mode = ctx.extras.get("loss_agg_mode", "token-mean")
    if mode == "seq-mean-token-mean":
        return torch.ones_like(lengths)
    if mode == "seq-mean-token-sum-norm":
        return (ctx.extras.get("max_length") or ctx.mask.shape[-1]) / lengths
    if mode == "token-mean":
        return (ctx.mask.sum() / ctx.mask.shape[0]) / lengths
    raise ValueError(f"guidance ampo: off_policy_loss_impl seq does not know loss_agg_mode {mode!r}")


@register("guidance", "ampo", paper="AMPO: More Than One Teacher: Adaptive Multi-Guidance Policy Optimization for "
                                    "Diverse Exploration, arXiv:2510.02227; code SII-Enigma/AMPO "
                                    "ampo/verl/verl/adaptive_mix_src/mix_dapo_trainer.py, mix_core_alg.py")
class AMPO(Guidance):
    engaged_when = (Acted("guide/ampo_teacher_rows", ">", 0, what="teacher rows injected on failed groups > 0"),)
    handles = frozenset({OFF_POLICY})

    def __init__(self, teachers: list | None = None, num_off_policy_targets: int = 2, max_available_targets: int = 4,
                 injection_strategy: str = "adaptive", hybrid_probability: float = 0.3,
                 target_selection_strategy: str = "best_k", comprehension: str = "mean_exp_log_softmax",
                 gamma: float = 0.1, target_probs: bool = False, off_policy_loss_impl: str = "token",
                 off_max_clip: float | None = None, off_min_clip: float | None = None):
        if injection_strategy not in INJECTION:
            raise ValueError(f"guidance ampo: injection_strategy must be one of {', '.join(INJECTION)}, "
                             f"got {injection_strategy!r}")
        if target_selection_strategy not in SELECTION:
            raise ValueError(f"guidance ampo: target_selection_strategy must be one of {', '.join(SELECTION)}, "
                             f"got {target_selection_strategy!r}")
        if comprehension not in COMPREHENSION:
            raise ValueError(f"guidance ampo: comprehension must be one of {', '.join(COMPREHENSION)}, "
                             f"got {comprehension!r}")
        if off_policy_loss_impl not in LOSS_IMPL:
            raise ValueError(f"guidance ampo: off_policy_loss_impl must be token or seq, got {off_policy_loss_impl!r}")
        if num_off_policy_targets < 1 or max_available_targets < 1:
            raise ValueError("guidance ampo: num_off_policy_targets and max_available_targets must be >= 1")
        if not 0.0 <= hybrid_probability <= 1.0 or not gamma > 0:
            raise ValueError("guidance ampo: need 0 <= hybrid_probability <= 1 and gamma > 0")
        self.teacher_names = teachers
        self.k, self.pool_size = num_off_policy_targets, max_available_targets
        self.injection, self.hybrid_probability = injection_strategy, hybrid_probability
        self.selection, self.comprehension = target_selection_strategy, comprehension
        self.gamma, self.target_probs, self.loss_impl = gamma, target_probs, off_policy_loss_impl
        self.off_max_clip, self.off_min_clip = off_max_clip, off_min_clip

    # ---- which groups, which rollouts, which solutions -----------------------------------------
    def wants_guidance(self, n_correct: int, rng) -> bool:
        if self.injection == "always" or n_correct == 0:
            return True
        return self.injection == "hybrid" and rng.random() < self.hybrid_probability

    def scores(self, cands, tokenizer) -> list[float]:
        """The comprehension score of every candidate row of ``cands`` (scored by the policy)."""
        out = []
        for r in range(cands.size):
            n = int(cands.lengths[r])
            n_text = n - 1 if n > 1 else n  # the stop token appended to the text is not the solution's
            start, end = answer_span(tokenizer, cands.texts[r], n_text)
            out.append(comprehension_score(cands.old_logp[r, start:end], self.comprehension))
        return out

    def guide(self, batch, ctx):
        kinds, rewards = batch.row_kind, batch.rewards
        plans, decided = [], 0
        for g, problem in enumerate(batch.problems):
            rows = ((batch.group == g) & (kinds == ON_POLICY)).nonzero().squeeze(-1).tolist()
            if not rows:
                continue
            wrong = [r for r in rows if float(rewards[r]) < 1.0]
            if not self.wants_guidance(len(rows) - len(wrong), ctx.rng):
                continue
            decided += 1
            if wrong:
                pool = candidate_pool(ctx, problem, self.teacher_names, self.pool_size)
                if pool:
                    plans.append((g, wrong, pool))
        metrics = {"guide/ampo_groups_triggered": float(decided), "guide/ampo_groups_injected": float(len(plans))}
        if not plans:
            metrics["guide/ampo_teacher_rows"] = 0.0
            return batch, metrics
        cands = ctx.score([batch.problems[g] for g, _, _ in plans], [len(pool) for _, _, pool in plans],
                          texts=[text for _, _, pool in plans for _, text in pool], kind=OFF_POLICY)
        scores = self.scores(cands, ctx.engine.tokenizer)
        chosen, replaced, start, picked_scores = [], [], 0, []
        for g, wrong, pool in plans:
            m = min(self.k, len(wrong), len(pool))
            pick = select_targets(scores[start:start + len(pool)], m, self.selection, ctx.rng)
            chosen += [start + i for i in pick]
            picked_scores += [scores[start + i] for i in pick]
            for i in pick:
                key = f"guide/ampo_from/{pool[i][0]}"
                metrics[key] = metrics.get(key, 0.0) + 1.0
            replaced += ctx.rng.sample(wrong, m)
            start += len(pool)
        keep = set(chosen)
        injected = cands.drop_rows([r for r in range(cands.size) if r not in keep]) if len(keep) < cands.size else cands
        metrics["guide/ampo_unverified"] = float((injected.rewards < 1.0).sum())
        injected.rewards = injected.rewards.float().clamp_min(1.0)  # injected solutions count as correct
        out = replace_rows(batch, replaced, injected, [g for g, _, _ in plans])
        metrics.update({"guide/ampo_teacher_rows": float(injected.size), "guide/ampo_candidates": float(cands.size),
                        "guide/ampo_teacher_tokens": float(injected.tokens),
                        "guide/ampo_comprehension": sum(picked_scores) / len(picked_scores),
                        "guide/ampo_comprehension_pool": sum(scores) / len(scores)})
        return out, metrics

    # ---- the loss on teacher tokens ------------------------------------------------------------
    def row_loss(self, ctx):
        prob = ctx.logp.exp()
        if self.target_probs:
            weight = prob / (ctx.behaviour_logp.exp() + 1e-6)
        else:
            weight = luffy_shaping(prob, self.gamma)
        weight = clip_weight(weight, self.off_min_clip, self.off_max_clip)
        loss = -ctx.advantages * weight
        off = off_policy_mask(ctx)
        rows = off.sum(-1) > 0
        per_seq = (loss.detach() * off).sum(-1) / off.sum(-1).clamp_min(1.0)
        metrics = {"loss/ampo_off_prob": masked_mean(prob.detach(), off),
                   "loss/ampo_off_weight": masked_mean(weight.detach(), off)}
        if rows.any():
            metrics["loss/ampo_off_seq_loss"] = float(per_seq[rows].mean())
        if self.loss_impl == "seq":
            loss = loss * sequence_mean_scale(ctx).to(loss.dtype)[:, None]
        return loss, metrics


def replace_rows(batch, drop: list[int], extra, origin: list[int]):
    """``batch`` with the rows ``drop`` removed and ``extra``'s groups appended to the groups
    ``origin`` (added first, so no group is ever left empty on the way)."""
    merged = batch.add_rows(extra, origin)
    old_start = torch.tensor([0] + list(batch.counts[:-1])).cumsum(0)
    new_start = torch.tensor([0] + list(merged.counts[:-1])).cumsum(0)
    group = batch.group
    new_rows = [int(new_start[group[r]] + (r - old_start[group[r]])) for r in drop]
    return merged.drop_rows(new_rows) if new_rows else merged

