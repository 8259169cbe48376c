"""Builds a recipe's components, one per level (lists for advantage and objective), and
checks that the chosen ones can be stacked."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from explorl.explore.base import Advantage, Budget, Component, Curriculum, Decoding, Guidance, Objective, Rollout
from explorl.registry import build
from explorl.teachers import Teacher, build_teachers


@dataclass
class Plugins:
    curriculum: Curriculum
    budget: Budget
    decoding: Decoding
    advantages: list[Advantage]
    objectives: list[Objective]
    guidance: list[Guidance] = ()
    teachers: dict[str, Teacher] = None
    rollout: Rollout = None  # the shape of a group (flat by default); stateless, so not in the checkpoint

    @classmethod
    def from_config(cls, cfg) -> "Plugins":
        advantages = [build("advantage", s, f"advantage[{i}]") for i, s in enumerate(_as_list(cfg.advantage))]
        objectives = [build("objective", s, f"objective[{i}]") for i, s in enumerate(_as_list(cfg.objective))]
        guidance = [build("guidance", s, f"guidance[{i}]") for i, s in enumerate(_as_list(cfg.guidance or []))]
        plugins = cls(curriculum=build("curriculum", cfg.curriculum), budget=build("budget", cfg.budget),
                      decoding=build("decoding", cfg.decoding), advantages=advantages, objectives=objectives,
                      guidance=guidance, teachers=build_teachers(cfg.teachers), rollout=build("rollout", cfg.rollout))
        plugins.check(rollouts_per_problem=cfg.train.rollouts_per_problem)
        plugins.check_rollout(cfg.train.parallel, cfg.model.backend)
        plugins.check_guidance()
        return plugins

    def check(self, rollouts_per_problem: int | None = None) -> None:
        estimators = [a for a in self.advantages if a.kind == "estimator"]
        if not self.advantages or self.advantages[0].kind != "estimator" or len(estimators) != 1:
            names = [a.registered_name for a in self.advantages]
            raise ValueError(f"advantage: the list must start with exactly one estimator (e.g. grpo) "
                             f"followed by shapers, got {names}")
        need = getattr(estimators[0], "min_group_size", 1)
        if rollouts_per_problem is not None and rollouts_per_problem < need:
            raise ValueError(f"train.rollouts_per_problem={rollouts_per_problem}: advantage estimator "
                             f"{estimators[0].registered_name!r} needs at least {need} rollouts per problem; "
                             f"it compares the rollouts of one problem with each other, so with fewer "
                             f"every advantage is 0 and no step would change the policy")
        fewest = self.budget.fewest_rollouts(rollouts_per_problem) if rollouts_per_problem is not None else need
        if fewest < need:
            raise ValueError(f"budget {self.budget.registered_name!r} gives some problems {fewest} rollout(s): "
                             f"advantage estimator {estimators[0].registered_name!r} needs at least {need} per "
                             f"problem (it compares the rollouts of one problem with each other); raise the "
                             f"budget's n or min_n")
        policy = [o.registered_name for o in self.objectives if o.kind == "policy"]
        if self.freezes_policy():
            frozen = [c.registered_name for c in self.all() if c.freezes_policy]
            if self.objectives:
                raise ValueError(f"objective: {', '.join(frozen)} keeps the language model frozen, so no loss term "
                                 f"applies to it; set objective: [] (got {[o.registered_name for o in self.objectives]})")
        elif len(policy) != 1:
            raise ValueError(f"objective: exactly one policy-loss term is needed (e.g. ppo_clip, clip_cov, "
                             f"lp_reg), got {policy or 'none'}; regularizers such as kl and entropy add to it")
        for component in self.all():
            incompatible = set(getattr(component, "incompatible_with", ())) & self.names()
            if incompatible:
                raise ValueError(f"{component.registered_name} cannot be combined with "
                                 f"{', '.join(sorted(incompatible))}: {component.incompatible_reason}")

    def check_rollout(self, parallel: str, backend: str) -> None:
        """The rollout shape can run where the config says: trees decode in one process, on the
        built-in engine."""
        rollout = self.rollout
        if rollout is None:
            return
        if parallel != "none" and not rollout.data_parallel:
            raise ValueError(f"rollout {rollout.registered_name!r} samples whole trees in one process; "
                             f"train.parallel: {parallel} is not supported with it (use train.parallel: none)")
        if backend == "vllm" and not rollout.any_engine:
            raise ValueError(f"rollout {rollout.registered_name!r} needs the built-in engine (it keeps the keys and "
                             f"values of shared prefixes); use model.backend: auto, fast or hf")

    def all(self) -> list[Component]:
        return [self.curriculum, self.budget, self.decoding, *self.advantages, *self.objectives, *self.guidance,
                *(self.teachers or {}).values()]

    def check_guidance(self) -> None:
        """Each row kind has one guidance method defining its loss; named teachers exist."""
        owner = {}
        for method in self.guidance:
            for kind in method.handles:
                if kind in owner:
                    from explorl.batch import ROW_KINDS
                    raise ValueError(f"guidance: {owner[kind]} and {method.registered_name} both define the loss of "
                                     f"{ROW_KINDS[kind]} rows; stack guidance methods that handle different rows")
                owner[kind] = method.registered_name
            for name in getattr(method, "teacher_names", None) or ():
                if name not in (self.teachers or {}):
                    known = ", ".join(self.teachers or {}) or "none"
                    raise ValueError(f"guidance {method.registered_name}: teacher {name!r} is not in the teachers: "
                                     f"section (defined: {known})")

    def freezes_policy(self) -> bool:
        """Whether a component keeps the language model as it is (no update of its weights)."""
        return any(c.freezes_policy for c in self.all())

    def names(self) -> set[str]:
        return {c.registered_name for c in self.all() + ([self.rollout] if self.rollout else [])}

    def needs(self) -> set[str]:
        return set().union(*(getattr(c, "needs", frozenset()) for c in self.all()))

    def state_dict(self) -> list:
        return [c.state_dict() for c in self.all()]

    def load_state_dict(self, states: list) -> None:
        for component, state in zip(self.all(), states, strict=True):
            component.load_state_dict(state)


def eval_thinking(cfg, ckpt, spec: str | None = None):
    """The ``ThinkingRule`` an evaluation of checkpoint ``ckpt`` of a run with config ``cfg``
    samples with (``None``: plain sampling): that of the decoding ``spec`` (a name or a YAML
    mapping with ``name``, ``explorl eval --decoding``), else the run's own decoding with the
    state it had at that checkpoint (a trained CTRLS transition policy, for one); ``ckpt=None``:
    before training (step 0, the decoding's initial state)."""
    import yaml

    from explorl.train.checkpoint import read_state
    state = read_state(ckpt) if ckpt is not None else None
    step = state["step"] if state is not None else 0
    if spec is not None:
        try:
            parsed = yaml.safe_load(spec)
        except yaml.YAMLError as err:
            raise ValueError(f"--decoding {spec!r}: not a name or a YAML mapping ({err})") from None
        return build("decoding", parsed, "--decoding").thinking(step, evaluating=True)
    plugins = Plugins.from_config(cfg)
    if state is not None:
        plugins.load_state_dict(state["plugins"])
    return plugins.decoding.thinking(step, evaluating=True)


def plugin_states(run_dir) -> list:
    """The plug-ins' states at the latest complete checkpoint of the run folder ``run_dir``, in
    the order of ``Plugins.all()`` (the curriculum first), read without touching the global RNGs
    (``read_state``, not ``load_state``)."""
    from explorl.train import checkpoint
    path = checkpoint.latest(Path(run_dir), warn=None)
    if path is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint")
    return checkpoint.read_state(path)["plugins"]


def _as_list(spec):
    return spec if isinstance(spec, list) else [spec]
