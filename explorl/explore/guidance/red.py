"""``red``: RED, Recall-Extend Dynamics: Enhancing Small Language Models through Controlled
Exploration and Refined Offline Integration (Guan et al., arXiv:2508.16677; not 2510.08233).

**Unofficial.** The paper links millioniron/OpenRLHF-Millioniron- (``tree/master``), but that
repository holds only OpenRLHF's fixed-coefficient ``ptx_coef`` SFT mix and entropy logging
(``openrlhf/trainer/ppo_trainer.py`` ~L452–511): no entropy-ratio weight and no accuracy shift.
The method is implemented here from the paper's description and the form a third-party
reimplementation gives (Phonsiriwillbejommarn/Recall-Extend-Dynamics-CoDA,
``verl/trainer/ppo/core_algos.py::compute_red_weight``, ``compute_accuracy_weight``;
``verl/trainer/ppo/ray_trainer.py`` ~L1115–1190). Neither the exact entropy-change definition nor
the accuracy shift was checked against the paper's equations (UNVERIFIED).

**Loss.** L = L_RL + coef · w_SFT · L_SFT, each term aggregated over its own rows
(``separate_term``), as the third-party ``dp_actor.update_policy`` adds its SFT loss (a token mean
over the demonstration batch) to the policy loss. Each step, up to ``per_problem`` teacher
solutions per problem enter as demonstration rows (``DEMO``: outside every group, no advantage, as
``sft`` adds them); L_SFT is the mean over their tokens (the run's ``loss_agg_mode`` over those
rows alone) of f_acc(problem) · (−log π_θ(e_t)), and L_RL the recipe's policy term and
regularizers over the policy's rows, untouched (weight 1). So the imitation weight is
coef · w_SFT whatever the number of rollouts per demonstration. ``coef`` (0.1) is the
third-party code's ``sft.loss_coef``; the paper's value is not known here.

**w_SFT, the entropy-change ratio** ("Recall": RL lowers entropy; "Extend": SFT raises it).
Implemented exactly as follows. After step t's update, ``observe`` runs one forward pass of the
updated policy over the step's batch and takes the mean token entropy (temperature 1, over the
response tokens) of the offline rows (``DEMO``) and of the online rows (``ON_POLICY`` and
``PREFIX``); "before" is the same mean from the batch itself (π_old's entropies, recorded at
sampling for rollouts and by ``score_responses`` for demonstrations). Then

    ΔH_off = H_after(DEMO) − H_before(DEMO),   ΔH_on = H_after(online) − H_before(online)
    w_SFT(t+1) = clip( |ΔH_off| / (|ΔH_on| + 1e-8), min_weight, bound )     (1 and G = 5)

(the third-party ``compute_red_weight``). ``ema`` (0.9) smooths |ΔH_off| and |ΔH_on| over steps
(an EMA with that decay, started at the first values) before the ratio; ``ema: 0`` uses the step's
own changes. w_SFT starts at ``init_weight`` (1) and keeps its value in a step without
demonstration rows. Choices: the change is the one the update itself caused on the same rows (the
third-party code takes the change between consecutive steps of an EMA, decay 0.99, of the entropy
level on each data type, its RL entropy estimated as −mean log π_old). One update moves the mean
entropy by ~0.01 on the testbed, and a step where the online change is near 0 sends the unsmoothed
ratio to the bound (seen: |ΔH_on| = 4e-4 → w = 5 after a w = 1 step), hence the smoothing by default.

**f_acc, the accuracy-aware policy shift** (``accuracy_shift``). The paper's mechanism moves the
assumed π_offline in the importance weight of demonstration tokens with the sample's accuracy:
accurate samples are treated as on-policy, inaccurate ones imitate the offline data. Its exact
form was not available here (UNVERIFIED); implemented is the third-party form
(``compute_accuracy_weight``), a multiplier of the SFT weight

    f_acc = clip( G^(1 − 2·acc), 1/G, G )       (acc 0 → G: imitate; 0.5 → 1; 1 → 1/G: own policy)

with acc the share of correct (reward ≥ 1) on-policy/prefix rollouts of the demonstration's own
problem in this step (``problem``, the default: "sample-accuracy-based") or of the whole batch
(``batch``, the third-party code's choice); ``off`` sets f_acc = 1. The third-party code also
clamps w_SFT·f_acc to [1, G²]; that clamp is left out here so that accurate problems (f_acc < 1)
can actually lower their imitation weight.

The current w_SFT and the EMA state are checkpointed. Metrics: ``guide/red_weight`` (w_SFT used
this step), ``guide/red_acc_factor`` (mean f_acc over demonstration rows), ``guide/red_demo_rows``;
after the update ``guide/red_dH_offline``, ``guide/red_dH_online``, ``guide/red_next_weight``.
"""
from __future__ import annotations

import torch

from explorl.batch import DEMO, ON_POLICY, PREFIX
from explorl.explore.acted import Acted
from explorl.explore.base import Guidance
from explorl.explore.guidance.sft import demonstrations, nll
from explorl.registry import register


def red_weight(dh_offline: float, dh_online: float, low: float = 1.0, high: float = 5.0) -> float:
    """w_SFT = clip(|ΔH_off| / (|ΔH_on| + 1e-8), low, high)."""
    return float(min(max(abs(dh_offline) / (abs(dh_online) + 1e-8), low), high))


def accuracy_factor(accuracy: float, bound: float = 5.0) -> float:
    """f_acc = clip(G^(1 − 2·acc), 1/G, G)."""
    return float(min(max(bound ** (1.0 - 2.0 * accuracy), 1.0 / bound), bound))


def mean_entropy(engine, batch, rows: torch.Tensor, chunk: int = 128) -> float:
    """The current policy's mean token entropy (temperature 1) over the response tokens of ``rows``."""
    from explorl.policy.sampling import token_logp_entropy
    total, count = 0.0, 0.0
    with torch.no_grad():
        for part in torch.split(rows, chunk):
            logits = engine.response_logits(batch, part)
            _, ent = token_logp_entropy(logits, batch.response_ids[part].to(logits.device), True)
            mask = batch.mask[part].to(ent.device)
            total += float((ent * mask).sum())
            count += float(mask.sum())
    return total / max(count, 1.0)


def recorded_entropy(batch, rows: torch.Tensor) -> float:
    """The mean of the entropies recorded in the batch (π_old's) over the response tokens of ``rows``."""
    mask = batch.mask[rows]
    return float((batch.entropy[rows] * mask).sum() / mask.sum().clamp_min(1.0))


@register("guidance", "red", paper="RED: Recall-Extend Dynamics, arXiv:2508.16677 (unofficial: the linked "
                                    "millioniron/OpenRLHF-Millioniron- has no RED; form of the third-party "
                                    "Recall-Extend-Dynamics-CoDA core_algos.py)")
class RED(Guidance):
    engaged_when = (Acted("guide/red_weight", ">", 0, reduce="max", what="SFT weight in force > 0"),)
    handles = frozenset({DEMO})
    separate_term = True
    state_keys = ("weight", "ema_offline", "ema_online")

    def __init__(self, teachers: list | None = None, per_problem: int = 1, coef: float = 0.1, bound: float = 5.0,
                 min_weight: float = 1.0, init_weight: float = 1.0, accuracy_shift: str = "problem",
                 ema: float = 0.9):
        if accuracy_shift not in ("problem", "batch", "off"):
            raise ValueError(f"guidance red: accuracy_shift must be problem, batch or off, got {accuracy_shift!r}")
        if per_problem < 1 or coef < 0:
            raise ValueError("guidance red: need per_problem >= 1 and coef >= 0")
        if not bound >= 1 or not 0 <= min_weight <= bound:
            raise ValueError("guidance red: need bound >= 1 and 0 <= min_weight <= bound")
        if not 0 <= ema < 1:
            raise ValueError("guidance red: ema must be in [0, 1)")
        self.teacher_names, self.per_problem, self.coef = teachers, per_problem, coef
        self.bound, self.min_weight, self.accuracy_shift, self.ema = bound, min_weight, accuracy_shift, ema
        self.weight = float(init_weight)
        self.ema_offline: float | None = None
        self.ema_online: float | None = None
        self._engine = None
        self._row_factor: torch.Tensor | None = None

    def guide(self, batch, ctx):
        self._engine = ctx.engine
        batch, added = demonstrations(batch, ctx, self.teacher_names, self.per_problem)
        return batch, {"guide/red_demo_rows": float(added), "guide/red_weight": self.weight}

    def row_factors(self, batch) -> torch.Tensor:
        """f_acc of every row of ``batch`` (1 on rows that are not demonstrations)."""
        kinds = batch.row_kind
        own = ((kinds == ON_POLICY) | (kinds == PREFIX)).float()
        correct = (batch.rewards.float() >= 1.0).float() * own
        factor = torch.ones(batch.size)
        if self.accuracy_shift == "off":
            return factor
        if self.accuracy_shift == "batch":
            acc = float(correct.sum() / own.sum().clamp_min(1.0))
            per_group = torch.full((len(batch.problems),), acc)
        else:
            n = torch.zeros(len(batch.problems)).index_add_(0, batch.group, own)
            k = torch.zeros(len(batch.problems)).index_add_(0, batch.group, correct)
            per_group = k / n.clamp_min(1.0)
        for r in (kinds == DEMO).nonzero().squeeze(-1).tolist():
            factor[r] = accuracy_factor(float(per_group[batch.group[r]]), self.bound)
        return factor

    def augment(self, batch, sampler):
        # after advantages, the batch the update sees: the per-row factors are taken on its rows
        self._row_factor = self.row_factors(batch)
        demo = batch.row_kind == DEMO
        if not demo.any():
            return batch, {}
        return batch, {"guide/red_acc_factor": float(self._row_factor[demo].mean())}

    def row_loss(self, ctx):
        factor = torch.ones(ctx.logp.shape[0], device=ctx.logp.device)
        if self._row_factor is not None and ctx.rows is not None:
            if int(ctx.rows.max()) >= len(self._row_factor):
                raise RuntimeError("guidance red: the batch changed after red's augment; put red last among the "
                                   "guidance methods")
            factor = self._row_factor[ctx.rows.cpu()].to(ctx.logp.device)
        return self.coef * self.weight * factor[:, None] * nll(ctx), {}

    def observe(self, stats):
        batch = stats.extras.get("batch")
        if batch is None or self._engine is None:
            return {}
        kinds = batch.row_kind
        offline = (kinds == DEMO).nonzero().squeeze(-1)
        online = ((kinds == ON_POLICY) | (kinds == PREFIX)).nonzero().squeeze(-1)
        self._row_factor = None
        if not len(offline) or not len(online):
            return {}
        dh_off = mean_entropy(self._engine, batch, offline) - recorded_entropy(batch, offline)
        dh_on = mean_entropy(self._engine, batch, online) - recorded_entropy(batch, online)
        a_off, a_on = abs(dh_off), abs(dh_on)
        if self.ema > 0:
            self.ema_offline = _ema(self.ema_offline, a_off, self.ema)
            self.ema_online = _ema(self.ema_online, a_on, self.ema)
            a_off, a_on = self.ema_offline, self.ema_online
        self.weight = red_weight(a_off, a_on, self.min_weight, self.bound)
        return {"guide/red_dH_offline": dh_off, "guide/red_dH_online": dh_on, "guide/red_next_weight": self.weight}


def _ema(old: float | None, new: float, decay: float) -> float:
    return new if old is None else decay * old + (1 - decay) * new
