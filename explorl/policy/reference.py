"""The reference (``reference:``, ``explorl.explore.reference``) as its component, and its
members: each loaded in float32, checked against the policy's architecture and vocabulary, as a
state dict."""
from __future__ import annotations

import dataclasses


def reference_component(cfg):
    """The ``reference:`` section as its registered component (``{kind: NAME, ...params}``)."""
    from explorl.registry import build
    spec = cfg.reference
    if isinstance(spec, str):
        spec = {"kind": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str) or "name" in spec:
        raise ValueError(f"reference: expected {{kind: initial}} or {{kind: soup, models: [...], weights: [...]}}, "
                         f"got {spec!r}")
    return build("reference", {"name": spec["kind"], **{k: v for k, v in spec.items() if k != "kind"}},
                 "reference")


def member_config(cfg, warmup_seed: int):
    """``cfg`` with the warm-up data order ``warmup_seed`` (a soup member's warm start)."""
    warmup = dataclasses.replace(cfg.model.warmup, seed=warmup_seed)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, warmup=warmup))


def member_name(member: dict) -> str:
    return member["path"] if "path" in member else f"the warm start with warmup_seed {member['warmup_seed']}"


def load_member(cfg, member: dict, where: str, policy, tokenizer, log=print) -> dict:
    """The float32 state dict of ``member`` (``{"path": DIR}`` or ``{"warmup_seed": N}``); a
    different set of tensors, a different shape or another vocabulary than ``policy`` and
    ``tokenizer`` is an error naming ``where``."""
    from explorl.policy.model import load_pretrained
    if "path" in member:
        model, member_tokenizer = load_pretrained(member["path"], "float32")
    else:
        from explorl.policy.warmup import warmup
        model, member_tokenizer = warmup(member_config(cfg, member["warmup_seed"]), log=log)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    own = policy.state_dict()
    missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or extra or shapes:
        raise ValueError(f"{where}: {member_name(member)} does not have the policy's architecture (missing "
                         f"{missing[:3]}, unexpected {extra[:3]}, other shapes {sorted(shapes)[:3]}); a soup "
                         f"averages tensors of the same names and shapes")
    if member_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"{where}: {member_name(member)} has another tokenizer vocabulary than the policy's; "
                         f"a soup's members must share one")
    return state
