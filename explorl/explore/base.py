"""The protocol of each level. A method is a subclass registered by name (see ``registry``).

Every plug-in returns its value and a dict of namespaced metrics; stateful plug-ins keep
their state in plain attributes listed in ``state_keys`` so checkpoints restore it exactly.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

# what an advantage function sees and what a rollout method samples from: part of their protocols
from explorl.batch import Groups, RolloutRequest  # noqa: F401

if TYPE_CHECKING:
    from explorl.tasks import Problem, TaskMix


class Component:
    """Shared by every plug-in: feedback after a step and checkpointable state."""

    state_keys: tuple[str, ...] = ()
    registered_name: str = ""
    #: True for a method that keeps the language model as it is (the trainer then skips its update,
    #: and the recipe names no objective): e.g. CTRLS trains only a module of its own, in ``observe``.
    freezes_policy: bool = False

    # which logged metrics show the mechanism acted (``explorl.explore.acted``): a tuple of
    # criteria that must all hold; None for a baseline component with nothing to engage
    engaged_when: tuple | None = None

    def engagement(self) -> tuple | None:
        """The criteria of ``engaged_when``; a component whose mechanism depends on its
        parameters (the PPO clip is one only with clip-higher) overrides this."""
        return self.engaged_when

    def observe(self, stats: "StepStats") -> dict[str, float]:
        """Feedback after each optimizer step; returns metrics to log."""
        return {}

    def before_training(self, ctx: "GuideContext") -> dict:
        """Called once before the first step of a run (not on resume): e.g. an SFT phase, or a
        calibration set sampled to set the method up. ``ctx`` is a ``GuideContext`` with
        ``draw(n)`` (problems from the curriculum), ``tasks`` (the run's task mix),
        ``problems_per_step``, ``run_length`` (``{"steps": train.steps, "max_tokens":
        train.max_tokens}``) and ``update(batch)`` (one optimizer step on a batch of rows).
        Returns counts to report (logged once)."""
        return {}

    def augment(self, batch, sampler) -> tuple[object, dict[str, float]]:
        """Change the scored batch after advantages and before the update (guidance, replay,
        tempered samples). ``sampler(problems, counts, temperatures=None)`` generates and
        verifies more rollouts; ``temperatures`` is a per-position list, a single number (one
        temperature over the whole response) or ``None`` (the recipe's decoding schedule).
        The default leaves the batch as it is."""
        return batch, {}

    def state_dict(self) -> dict[str, Any]:
        return {k: copy.deepcopy(getattr(self, k)) for k in self.state_keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.state_keys:
            setattr(self, k, copy.deepcopy(state[k]))


class Curriculum(Component):
    """Chooses which problems to train on: ``next(n) -> list[Problem]``."""

    state_keys = ("rng",)

    def bind(self, tasks: "TaskMix", seed: int) -> None:
        self.tasks = tasks
        self.rng = random.Random(seed)

    def next(self, n: int) -> tuple[list["Problem"], dict[str, float]]:
        raise NotImplementedError


class Budget(Component):
    """How many rollouts each chosen problem gets: ``allocate(problems, total) -> counts``."""

    def allocate(self, problems: list["Problem"], total: int) -> tuple[list[int], dict[str, float]]:
        raise NotImplementedError

    def fewest_rollouts(self, rollouts_per_problem: int) -> int:
        """The fewest rollouts this budget can give a problem (checked against the advantage
        estimator's ``min_group_size`` before a run starts)."""
        return rollouts_per_problem

    def collect(self, sample, problems: list["Problem"], counts: list[int], draw=None):
        """Produce the scored batch; ``sample(problems, counts)`` generates and verifies.

        ``draw(n) -> list[Problem]`` asks the curriculum for ``n`` more problems (for budgets
        that refill dropped groups). The default samples once. Budgets that filter or refill
        groups (dynamic sampling) or split a large N into chunks override this.
        """
        return sample(problems, counts)


class Decoding(Component):
    """The sampling schedule: a temperature per response position, top-p, and optionally an
    activation intervention the engine applies while it samples (``explorl.policy.intervention``)."""

    top_p: float = 1.0

    def temperatures(self, step: int, max_new_tokens: int) -> torch.Tensor:
        """Temperature at each response position, shape ``(max_new_tokens,)``."""
        raise NotImplementedError

    def intervention(self, step: int):
        """What the engine changes in the residual stream while it samples at ``step`` (never
        in the update's or an evaluation's forward); ``None``: the model as it is."""
        return None

    def thinking(self, step: int, evaluating: bool = False):
        """A ``explorl.policy.soft_decode.ThinkingRule`` that decides each decoding step (soft
        tokens: CoT2, SwiReasoning, CTRLS), used for training rollouts and, with ``evaluating``,
        for held-out evaluation; ``None`` (the default): each step samples one token from the
        temperature schedule, and evaluation samples at ``eval.temperature``."""
        return None


class Rollout(Component):
    """The shape of a problem's rollouts: ``sample(request) -> (batch, metrics)`` returns the
    scored batch (rewards set) with ``request.counts[i]`` rows for problem i.

    ``flat`` draws independent sequences. A tree method (``explorl.policy.tree``) branches them
    from shared prefixes: it sets ``batch.tree_node`` and ``batch.generated_tokens`` (a shared
    prefix counted once, which is what the token budget counts) and reports ``rollout/`` metrics
    (``accumulate`` adds those of several calls in a step: sums, and maxima of ``*_peak``).
    ``data_parallel``: whether ``train.parallel`` may split its rows over processes;
    ``any_engine``: whether it runs on an engine other than the built-in one (vLLM);
    ``soft_tokens``: whether it passes a decoding's soft-token rule (``request.thinking``) on;
    ``interventions``: whether it passes a decoding's activation intervention
    (``request.intervention``) on.
    """

    data_parallel: bool = False
    any_engine: bool = False
    soft_tokens: bool = False
    interventions: bool = False

    def sample(self, request: "RolloutRequest") -> tuple[Any, dict[str, float]]:
        raise NotImplementedError

    @staticmethod
    def accumulate(into: dict, metrics: dict) -> None:
        for key, value in metrics.items():
            into[key] = max(into.get(key, value), value) if key.endswith("_peak") else into.get(key, 0) + value


class Advantage(Component):
    """``kind = "estimator"`` turns rewards into advantages; a ``"shaper"`` adjusts them.

    ``compute(groups, adv)`` returns ``(adv, metrics)`` with ``adv`` of shape ``(P, G)``,
    zero where ``groups.mask`` is 0. Estimators receive ``adv=None``.

    An estimator whose advantage varies along a response (per node of a tree rollout) also sets
    ``groups.extras["token_advantages"]``, ``(R, Lc)`` over the rows of
    ``groups.extras["batch"]``; a shaper's change to a row's advantage is then added to every
    token of the row.
    """

    kind = "estimator"
    needs: frozenset[str] = frozenset()  # e.g. {"hidden_states"}
    min_group_size: int = 1  # estimators: fewest rollouts per problem that can give a non-zero advantage

    def compute(self, groups: "Groups", adv: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


class Objective(Component):
    """A loss term: ``term(ctx) -> (per_token_loss (R, L), metrics)``.

    Exactly one term of ``kind = "policy"`` (the policy-gradient surrogate) per recipe;
    any number of ``"regularizer"`` terms are added to it. A ``"token_mask"`` term returns a
    ``(R, L)`` weight instead of a loss: the policy term is multiplied by it (detached; several
    masks multiply), the regularizers are not (e.g. train only high-entropy tokens). Aggregation
    over tokens is a separate choice (``loss_agg_mode``) and still divides by all response
    tokens. ``needs`` asks the trainer for extra tensors in the context: ``"entropy"``,
    ``"ref_logp"``, ``"logits"``.
    """

    kind = "regularizer"
    needs: frozenset[str] = frozenset()

    def term(self, ctx: "LossContext") -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


class Guidance(Component):
    """Brings outside or past solutions into the batch, and says how their tokens are weighted.

    ``guide(batch, ctx)`` runs after sampling and before advantages, so the estimator sees the
    mixed groups; it returns the batch with rows added or replaced (each row marked with its
    kind, ``explorl.batch.ROW_KINDS``) and metrics. ``ctx`` (``GuideContext``) samples more
    on-policy rollouts (counted in the token budget), scores given responses (teachers',
    references', replayed ones; their tokens are counted apart) and holds the ``teachers``.

    ``handles`` is the set of row kinds whose loss ``row_loss(ctx)`` defines (per token, like an
    objective term; it replaces the policy term on those rows). By default that loss is pooled
    with the policy's rows: one aggregation (``train.loss_agg_mode``) over all of them. With
    ``separate_term = True`` it is a term of its own, L = L_RL + L_method: aggregated over the
    rows it handles alone (its own token mean under ``token-mean``) and added to the aggregate
    of the other rows, as a supervised term beside RL is written (SFT+RL, AMFT, RED); the
    regularizers (``kl``, ``entropy``, …) then do not cover its rows.

    ``rl_weight(step)`` scales L_RL, the RL part of the loss: the policy term and the
    regularizers on on-policy and prefix rows (imitation/exploration balances); 1 by default.

    ``ratio_anchor(ctx)`` may replace π_old, the log-probs the policy term's ratio is taken against,
    on the minibatch ``ctx`` (REX-RAG's mixture behaviour policy); ``None`` (default) keeps
    ``ctx.old_logp``. It runs inside the loss, after ``train.recompute_old_logp`` has replaced
    π_old, so a correction built on π_old survives the recompute.
    """

    handles: frozenset[int] = frozenset()
    needs: frozenset[str] = frozenset()
    separate_term: bool = False

    def guide(self, batch, ctx: "GuideContext"):
        return batch, {}

    def row_loss(self, ctx: "LossContext") -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def rl_weight(self, step: int) -> float:
        return 1.0

    def ratio_anchor(self, ctx: "LossContext") -> torch.Tensor | None:
        return None


class Reference(Component):
    """The model that KL-type terms measure against (the ``reference:`` config section), and
    where the policy starts.

    ``weights(load, with_reference)`` returns ``(start, reference)`` state dicts: ``start``
    replaces the policy's initial weights (``None``: keep those ``model.path`` or the warm start
    gave); ``reference`` holds the reference's weights when it is not the policy's start
    (``None``: the reference is the start, held as a frozen copy of the initial policy, or as
    the LoRA base with the adapters off). ``load(i)`` returns the float32 state dict of
    ``members[i]``, checked against the policy's architecture; with ``with_reference`` false only
    the start is asked for. ``needs`` is added to the recipe's (``{"ref_logp"}``: compute the
    reference's log-probs every step, also when no term reads them, for ``ref/kl``).
    """

    members: tuple = ()
    policy_init: str = "initial"
    needs: frozenset[str] = frozenset()

    def weights(self, load, with_reference: bool = True) -> tuple[dict | None, dict | None]:
        return None, None

    def spec(self) -> dict:
        """The config section this component stands for, every parameter written out."""
        return {"kind": self.registered_name}

    def describe(self) -> str:
        return f"reference: {self.registered_name}"

    def warnings(self, needs: set[str]) -> list[str]:
        """What to tell the user about this reference given what the recipe's terms read."""
        return []


@dataclass
class GuideContext:
    """What a guidance method may use in ``guide``: no component reaches into another."""

    step: int
    sample: Any            # sample(problems, counts, temperatures=None) -> scored on-policy batch
    score: Any             # score(problems, counts, texts=None, token_ids=None, behaviour_logp=None,
    #                        kind=OFF_POLICY) -> scored batch of given responses
    teachers: dict[str, Any]
    engine: Any
    verify: Any            # verify(problems, texts) -> list of rewards
    rng: Any = None        # random.Random of the step, for the method's draws
    extras: dict[str, Any] = field(default_factory=dict)
    loss: Any = None       # the update's loss (explorl.train.update.UpdateLoss), for a method that needs its gradient
    # before_training only:
    draw: Any = None       # draw(n) -> n problems from the curriculum
    tasks: Any = None      # the run's TaskMix (problems drawn apart from the curriculum's stream)
    problems_per_step: int = 0
    update: Any = None     # update(batch) -> metrics of one optimizer update on those rows


@dataclass
class LossContext:
    """Per-token tensors of one minibatch, all ``(R, L)``; ``mask`` marks response tokens.

    ``logp`` carries gradient. ``old_logp`` is π_old at temperature 1 (the PPO anchor);
    ``behaviour_logp`` is the log-prob under the distribution the token was actually
    sampled from (differs from ``old_logp`` under annealed or tempered decoding).
    """

    logp: torch.Tensor
    old_logp: torch.Tensor
    behaviour_logp: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    step: int = 0
    entropy: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    rows: torch.Tensor | None = None  # indices of these rows in the full batch
    extras: dict[str, Any] = field(default_factory=dict)
    kind: torch.Tensor | None = None  # (R,) what each row is (explorl.batch.ROW_KINDS); None: all on-policy


@dataclass
class StepStats:
    """Feedback from one step to the stateful plug-ins (``observe``)."""

    step: int
    problems: list["Problem"]
    rewards: list[list[float]]           # per problem, one per rollout
    advantages: list[list[float]]        # per problem, one (sequence-level) per rollout
    entropy: float                       # mean token entropy of the rollouts
    tokens: int                          # response tokens generated this step
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> list[int]:
        return [len(r) for r in self.rewards]

    def success(self) -> list[float]:
        return [sum(r) / len(r) if r else 0.0 for r in self.rewards]
