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
random (``ctx.rng``; the code's ``random.sample(incorrect_positions, …)``), are replaced by teacher
solutions, k = ``num_off_policy_targets`` (2). The replaced rollouts were generated and their
tokens stay spent (``tokens/step``): the authors' code also replaces failed rollouts after
generation, so this is the paper's cost. Injected solutions count as correct: their reward is
raised to 1 if the verifier gave less (the code sets it to 1.0), and ``guide/ampo_unverified``
counts those.

**Which candidates are injected** (``mix_off_policy_rollout`` ~L1575–1590). The pool is ordered
(see below) and its first min(k, #candidates) are *available*; then, as the code does, the
replaced rollouts are visited in group order and the one at position j (its index among the
group's rollouts) takes the available candidate at ``j % len(available)`` (index 0 when one is
left), which leaves the list. With as many replaced rollouts as available candidates every one of
them is injected; with fewer (fewer wrong rollouts than k) the positions decide which: with k = 2
and one wrong rollout at an odd position, the second-ranked candidate is injected, not the first.

**Candidates: several teachers.** The candidate pool of a problem holds up to
``max_available_targets`` (4) distinct solutions taken round-robin over the named teachers (one
from each in turn, so every teacher is represented; ``None``: every teacher of the run). The
recipe defines two countdown solvers with different search orders (``solver_asc``,
``solver_desc``) and ``reference``, so the choice between them is real.

**Selection by comprehension** (``target_selection_strategy: best_k``, the code's
``off_policy_reward_manager='prob'``, which is what orders the pool in the code; the script's
``target_selection_strategy=best_k`` is not read by the trainer). Every candidate is scored by the
current policy (``ctx.score``: one forward pass, its ``old_logp``) and the pool is sorted by the
code's score (``ProbRewardManager.__call__``, ``workers/reward_manager/prob.py`` ~L245–255, with
the script's ``reward_manager_shaping_function_name=threshold_0`` and ``format_coefficient=0.1``,
the parameter ``format_coefficient`` here):

    score = 0.9 · max(B − A, 0) + 0.1 · format

- B (``compute_scoreB``): the policy's comprehension of the answer tokens when they follow the
  teacher's reasoning, i.e. the log-probs of the answer span reduced by ``comprehension`` (the
  code's ``compute_score_name``; script: ``mean_exp_log_softmax``, the mean token probability);
- A (the code's ``get_scoreA``, ``mix_dapo_trainer.py`` ~L1805): the same reduction over the same
  answer tokens placed right after the prompt, with no reasoning before them: what the policy
  makes of the answer alone.
  B − A is what the teacher's reasoning adds; ``threshold_0`` sets a negative gain to 0;
- format (``reward_manager/format.py``, ``format_mode=R1_nothink``): 1 when the solution holds
  exactly one ``<answer>`` and one ``</answer>``, in that order, else 0.

Here:

- the answer span is the solution's **final line** (where worked solutions and the reference
  completion put the answer), the tokens after the teacher's reasoning (the lines before it); A
  scores that line as a response to the prompt alone (one more forward pass over the final lines
  of multi-line candidates, counted in ``tokens/teacher``);
- a one-line solution, which is every testbed teacher's (a countdown expression, an answer), is
  all answer: B = A exactly (the same tokens after the same prompt), so its score is
  0.1 · format, and no testbed solution carries answer tags: on the testbed every candidate scores
  0 and ``best_k`` keeps pool order (as ``first``, teachers in turn);
- the final line is the teacher's own answer rather than the gold one put in its place (the
  code's ``replace_answer_with_gt``): candidates come from verified teachers, so the two agree;
- where the code differs and this does not follow: it computes A once per prompt before training
  (``compute_promptgt2scoreA``, with the initial policy over the whole training set), while a
  testbed source generates problems without end, so A is taken with the current policy when a
  problem is guided (the policy that gives B); it rounds B to bfloat16 (``scoreB =
  torch.tensor(scoreB, dtype=torch.bfloat16)``), a precision artifact not kept; and it sorts with
  ``torch.argsort(descending=True)``, whose order among ties is unspecified, while ties here keep
  pool order.

``comprehension`` picks the reduction: ``mean_exp_log_softmax`` (mean probability; the script's,
the default), ``exp_mean_log_softmax`` (geometric mean; the paper's Eq. 5), ``mean_log_softmax``,
``exp_sum_log_softmax``. Other orders: ``random`` (the code's ``random`` manager) and ``first``
(pool order, the code's ``naive``). Every candidate is read by the policy once (a multi-line
one twice: its final line alone, for A), so ``tokens/teacher`` counts the whole pool of the
guided groups; ``guide/ampo_teacher_tokens`` counts the injected rows. Metrics: ``guide/ampo_score`` (mean score of the injected candidates),
``guide/ampo_score_pool``, ``guide/ampo_comprehension`` (their mean B) and
``guide/ampo_comprehension_prompt`` (their mean A).

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

import re

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


def answer_tag_format(text: str) -> float:
    """The code's ``format_reward(…, format_mode='R1_nothink')``: 1 when ``text`` holds exactly one
    ``<answer>`` and one ``</answer>``, in that order."""
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return 0.0
    return 1.0 if re.fullmatch(r".*<answer>.*</answer>.*", text, re.DOTALL) else 0.0


def target_score(b: float, a: float, form: float, format_coefficient: float = 0.1) -> float:
    """(1 − c)·max(B − A, 0) + c·format: the code's score with ``threshold_0`` shaping."""
    return (1 - format_coefficient) * max(b - a, 0.0) + format_coefficient * form


def assign_targets(available: list[int], positions: list[int]) -> list[int]:
    """The candidates injected for the replaced rollouts at ``positions`` (their indices in the
    group): visited in group order, the one at position j takes ``available[j % len(left)]``
    (index 0 when one is left) of those left, as the code assigns them."""
    left, out = list(available), []
    for j in sorted(positions):
        if not left:
            break
        out.append(left.pop(j % len(left) if len(left) > 1 else 0))
    return out


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
                 off_max_clip: float | None = None, off_min_clip: float | None = None, format_coefficient: float = 0.1):
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
        if not 0.0 <= hybrid_probability <= 1.0 or not gamma > 0 or not 0.0 <= format_coefficient <= 1.0:
            raise ValueError("guidance ampo: need 0 <= hybrid_probability <= 1, gamma > 0 and "
                             "0 <= format_coefficient <= 1")
        self.format_coefficient = format_coefficient
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

    def answer_comprehension(self, cands, tokenizer) -> tuple[list[float], list[tuple[int, int]]]:
        """B of every candidate row of ``cands`` (scored by the policy), and its answer span."""
        out, spans = [], []
        for r in range(cands.size):
            n = int(cands.lengths[r])
            n_text = n - 1 if n > 1 else n  # the stop token appended to the text is not the solution's
            start, end = answer_span(tokenizer, cands.texts[r], n_text)
            out.append(comprehension_score(cands.old_logp[r, start:end], self.comprehension))
            spans.append((start, end))
        return out, spans

    def prompt_comprehension(self, ctx, problems, cands, b, spans) -> list[float]:
        """A of every candidate: its answer line scored right after the prompt (B itself when the
        answer span is the whole solution: the same tokens after the same prompt)."""
        a = list(b)
        lines = [r for r, (start, _) in enumerate(spans) if start > 0]
        if lines:
            texts = [cands.texts[r][cands.texts[r].rstrip().rfind("\n") + 1:] for r in lines]
            alone = ctx.score([problems[int(cands.group[r])] for r in lines], [1] * len(lines), texts=texts,
                              kind=OFF_POLICY)
            for i, r in enumerate(lines):
                n = int(alone.lengths[i])
                a[r] = comprehension_score(alone.old_logp[i, :n - 1 if n > 1 else n], self.comprehension)
        return a

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
                    plans.append((g, rows, wrong, pool))
        metrics = {"guide/ampo_groups_triggered": float(decided), "guide/ampo_groups_injected": float(len(plans))}
        if not plans:
            metrics["guide/ampo_teacher_rows"] = 0.0
            return batch, metrics
        problems = [batch.problems[g] for g, _, _, _ in plans]
        cands = ctx.score(problems, [len(pool) for _, _, _, pool in plans],
                          texts=[text for _, _, _, pool in plans for _, text in pool], kind=OFF_POLICY)
        b, spans = self.answer_comprehension(cands, ctx.engine.tokenizer)
        a = self.prompt_comprehension(ctx, problems, cands, b, spans)
        scores = [target_score(b[r], a[r], answer_tag_format(cands.texts[r]), self.format_coefficient)
                  for r in range(cands.size)]
        chosen, replaced, start = [], [], 0
        for g, rows, wrong, pool in plans:
            m = min(self.k, len(wrong), len(pool))
            available = select_targets(scores[start:start + len(pool)], min(self.k, len(pool)), self.selection,
                                       ctx.rng)
            drop = ctx.rng.sample(wrong, m)
            pick = assign_targets(available, [rows.index(r) for r in drop])
            chosen += [start + i for i in pick]
            for i in pick:
                key = f"guide/ampo_from/{pool[i][0]}"
                metrics[key] = metrics.get(key, 0.0) + 1.0
            replaced += drop
            start += len(pool)
        keep = set(chosen)
        injected = cands.drop_rows([r for r in range(cands.size) if r not in keep]) if len(keep) < cands.size else cands
        metrics["guide/ampo_unverified"] = float((injected.rewards < 1.0).sum())
        injected.rewards = injected.rewards.float().clamp_min(1.0)  # injected solutions count as correct
        out = replace_rows(batch, replaced, injected, [g for g, _, _, _ in plans])
        metrics.update({"guide/ampo_teacher_rows": float(injected.size), "guide/ampo_candidates": float(cands.size),
                        "guide/ampo_teacher_tokens": float(injected.tokens),
                        "guide/ampo_score": _mean(scores[r] for r in chosen),
                        "guide/ampo_score_pool": _mean(scores),
                        "guide/ampo_comprehension": _mean(b[r] for r in chosen),
                        "guide/ampo_comprehension_prompt": _mean(a[r] for r in chosen)})
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



def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
