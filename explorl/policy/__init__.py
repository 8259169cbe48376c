"""Models, tokenizers and the rollout engine."""


def load_policy(cfg, log=print):
    """The policy ``cfg.model`` describes, as ``(model, tokenizer)``: a saved model directory
    (``model.path``) or the warm-started testbed model, on ``model.device``, in ``model.dtype``,
    dropout off, with gradient checkpointing and LoRA adapters (``model.lora``) when asked. The
    weights are those the ``reference:`` section starts the policy at (a soup, or a member of
    it; by default the model's own)."""
    model, tokenizer, _ = load_policy_and_reference(cfg, log, with_reference=False)
    return model, tokenizer


def load_policy_and_reference(cfg, log=print, reference=None, with_reference: bool = True):
    """``(model, tokenizer, reference_model)``: the policy as ``load_policy`` gives it, and the
    reference as a frozen full model where it is not the policy's start (``None`` where it is:
    the caller then holds a frozen copy of the start, or the LoRA base). ``model.path`` or the
    warm start gives the architecture and tokenizer; ``reference`` (the component of
    ``cfg.reference``, built here if not given) may replace the weights."""
    import copy

    from explorl.policy.model import load_pretrained
    from explorl.policy.reference import load_member
    if cfg.model.path:
        model, tokenizer = load_pretrained(cfg.model.path, cfg.model.dtype, log)
    else:
        from explorl.policy.warmup import warmup
        model, tokenizer = warmup(cfg, log=log)
    if reference is None:
        from explorl.policy.reference import reference_component
        reference = reference_component(cfg)
    start, soup = reference.weights(lambda i: load_member(cfg, reference.members[i], f"reference.models[{i}]",
                                                          model, tokenizer, log), with_reference)
    reference_model = None
    if soup is not None:
        reference_model = copy.deepcopy(model)
        reference_model.load_state_dict(soup)
        reference_model = frozen(reference_model, cfg.model)
    if start is not None:
        model.load_state_dict(start)
    return prepare(model, cfg.model, cfg.seed, log), tokenizer, reference_model


def frozen(model, section):
    """``model`` on ``section.device`` in ``section.dtype``, dropout off, in eval mode, without gradients."""
    from explorl.policy.model import disable_dropout, set_dtype
    from explorl.policy.device import resolve_device
    model.to(resolve_device(section.device))
    set_dtype(model, section.dtype)
    disable_dropout(model)
    return model.eval().requires_grad_(False)


def make_engine(cfg, model, tokenizer, prompt_format):
    """The rollout engine ``model.backend`` names: the built-in one (``auto``, ``fast``, ``hf``) or
    vLLM's (``vllm``; ``explorl.policy.vllm_engine``)."""
    if cfg.model.backend == "vllm":
        from explorl.policy.vllm_engine import VLLMEngine
        return VLLMEngine(model, tokenizer, prompt_format, cfg.model.vllm)
    from explorl.policy.engine import RolloutEngine
    return RolloutEngine(model, tokenizer, cfg.model.backend, prompt_format, cfg.model.cuda_graphs)


def prepare(model, section, seed: int, log=print):
    """``model`` set up as the config's ``model`` ``section`` says (see ``load_policy``); LoRA
    adapters are drawn from ``seed``."""
    from explorl.policy.model import (
        disable_dropout,
        enable_gradient_checkpointing,
        set_dtype,
    )
    from explorl.policy.device import resolve_device
    model.to(resolve_device(section.device))
    set_dtype(model, section.dtype)
    dropped = disable_dropout(model)
    if dropped:
        log(f"model: dropout turned off ({', '.join(dropped)}): the policy-gradient ratio compares the "
            f"training forward with the log-probs recorded while sampling")
    if section.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if section.lora is not None:
        from explorl.policy.lora import add_lora
        model = add_lora(model, section.lora, seed)
    return model
