"""SALSA: a weight-space average ("soup") of fine-tuned models as the KL reference.

Chegini, Kazemi, Mirzadeh, Yin, Horton, Nabi, Farajtabar, Alizadeh, *SALSA: Soup-based
Alignment Learning for Stronger Adaptation in RLHF*, arXiv:2411.01798 (NeurIPS 2024 FITML
workshop; ICLR 2025 submission, OpenReview AN6PIiObp0). No code was released.

From the abstract: the KL penalty of PPO is taken not to the frozen initial (SFT) policy but
to a weight-space average of two independently fine-tuned SFT models, which "allows for larger
deviation in KL divergence" without losing stability and reaches higher reward:

    θ_soup = Σ_k w_k θ_k            (w_k ≥ 0, Σ_k w_k = 1; two members: α θ_1 + (1 − α) θ_2)
    J(θ) = E[r] − β KL(π_θ ‖ π_soup)

Here ``models`` are the members: saved model folders (as ``model.path``) or, on the testbed,
warm starts with their own warm-up data order (``{warmup_seed: N}``: ``model.warmup.seed`` = N;
the initialisation stays ``model.tiny.seed``, so the members share their starting point, as a
soup assumes). Every term that reads the reference (``kl``'s ``ctx.ref_logp``, ``repr_bonus``'s
and ``submodular``'s ``ref_engine``) reads the soup; ``kl_cov`` measures |log π_θ − log π_old|,
which needs no reference. ``ref/kl`` logs the mean k3 KL of the sampled tokens (π_old) to the
reference every step, before the update, also when no term reads it (``needs = {"ref_logp"}``).

Documented choices (the paper's full text could not be read: these are NOT VERIFIED and are
parameters):

- **Weights.** ``weights`` default to equal shares (α = 0.5 for two members); a third-party digest
  of the reviews has a reviewer ask why the midpoint works best, which suggests α was swept.
- **Where the policy starts** (``policy_init``): ``soup`` (default; the KL term is then 0 at the
  first step, as with the usual reference) or ``first`` (the first member, an SFT model as in
  PPO). It is written into the run's config.yaml.
- **Averaging.** Floating-point tensors are summed in float32 (w_k θ_k, member by member, so one
  member is in memory at a time beside the sum) and cast to ``model.dtype`` when loaded; other
  tensors (integer buffers) must be equal in every member. Members must have the policy's
  architecture (every tensor's name and shape) and tokenizer vocabulary.
- **How it is held.** With ``policy_init: soup`` the reference is held as today's is: a frozen copy
  of the initial policy (the soup), or under LoRA the base with its adapters off (the base is the
  soup). With ``policy_init: first`` the soup is a separate frozen full model (also under LoRA,
  where the trained base is the first member): one more copy of the weights in memory.
- The KL estimator and β are the ``kl`` term's (k3 in the loss, β = ``coef``); the paper's
  estimator, β and whether β adapts are NOT VERIFIED.

Pitfalls (SEED_METHODS): a soup presumes fine-tunes of one pretrained model; KL values to
different references are not comparable (``ref/kl`` is to this run's reference only); without
a term that reads the reference (β = 0, the usual GRPO) SALSA only moves the policy's start,
and the run says so at its start.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from explorl.explore.acted import Acted
from explorl.explore.base import Reference
from explorl.registry import register

POLICY_INITS = ("soup", "first")


def member_spec(spec, where: str) -> dict:
    """A member as ``{"path": folder}`` or ``{"warmup_seed": N}``; a string is a folder."""
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict) or len(spec) != 1 or not spec.keys() <= {"path", "warmup_seed"}:
        raise ValueError(f"{where}: expected a saved model folder (a path, or {{path: DIR}}) or a testbed warm "
                         f"start {{warmup_seed: N}}, got {spec!r}")
    if "path" in spec:
        path = spec["path"]
        if not isinstance(path, str) or not path.strip():
            raise ValueError(f"{where}: path: expected a folder name, got {path!r}")
        if not Path(path).is_dir():
            raise ValueError(f"{where}: folder {path!r} not found")
        if not (Path(path) / "config.json").exists():
            raise ValueError(f"{where}: folder {path!r} holds no config.json: not a saved model")
        return {"path": path}
    seed = spec["warmup_seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"{where}: warmup_seed: expected an integer in [0, 2**32), got {seed!r}")
    return {"warmup_seed": seed}


def add_weighted(total: dict | None, state: dict, weight: float, where: str) -> dict:
    """``total + weight · state`` over floating tensors (float32); other tensors must be equal."""
    if total is None:
        return {k: weight * v.float() if v.is_floating_point() else v.clone() for k, v in state.items()}
    for key, value in state.items():
        if value.is_floating_point():
            total[key] += weight * value.float()
        elif not torch.equal(total[key], value):
            raise ValueError(f"{where}: its tensor {key} ({value.dtype}) differs from the first member's; "
                             f"tensors that are not floating point cannot be averaged")
    return total


@register("reference", "soup", paper="SALSA, soup-based alignment learning (arXiv:2411.01798)")
class Soup(Reference):
    # the KL term pulls toward a reference the policy has left (a soup equal to the policy would
    # give ref/kl = 0 throughout)
    engaged_when = (Acted("ref/kl", ">", 0, reduce="max", what="KL to the soup reference is non-zero"),)
    needs = frozenset({"ref_logp"})

    def __init__(self, models: list, weights: list | None = None, policy_init: str = "soup"):
        if not isinstance(models, list) or not models:
            raise ValueError(f"models: expected a non-empty list of saved model folders or {{warmup_seed: N}} "
                             f"warm starts, got {models!r}")
        self.members = [member_spec(m, f"models[{i}]") for i, m in enumerate(models)]
        if weights is None:
            weights = [1.0 / len(models)] * len(models)
        if len(weights) != len(models):
            raise ValueError(f"weights: {len(weights)} weight(s) for {len(models)} model(s); give one per model")
        for i, w in enumerate(weights):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"weights[{i}]: expected a finite number >= 0, got {w!r}")
        if abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"weights: {list(weights)} sum to {sum(weights):g}; a soup is a weighted mean, its "
                             f"weights must sum to 1")
        if policy_init not in POLICY_INITS:
            raise ValueError(f"policy_init: {policy_init!r} is not one of {', '.join(POLICY_INITS)}")
        self.mix = [float(w) for w in weights]
        self.policy_init = policy_init

    def weights(self, load, with_reference: bool = True):
        if self.policy_init == "first" and not with_reference:
            return load(0), None
        soup, first = None, None
        for i, w in enumerate(self.mix):
            state = load(i)
            if i == 0 and self.policy_init == "first":
                first = state
            soup = add_weighted(soup, state, w, f"reference.models[{i}]")
        return (soup, None) if self.policy_init == "soup" else (first, soup)

    def spec(self) -> dict:
        return {"kind": "soup", "models": [dict(m) for m in self.members], "weights": list(self.mix),
                "policy_init": self.policy_init}

    def describe(self) -> str:
        from explorl.policy.reference import member_name
        parts = " + ".join(f"{w:g} × {member_name(m)}" for w, m in zip(self.mix, self.members))
        start = "the soup" if self.policy_init == "soup" else "the first member"
        return f"reference: the soup {parts}; the policy starts at {start}"

    def warnings(self, needs):
        if needs & {"ref_logp", "ref_model"}:
            return []
        return ["reference: soup, but no term of the recipe reads the reference (add the kl objective): the soup "
                "only sets where the policy starts, and ref/kl is logged"]
