"""Models, tokenizers and the rollout engine."""


def load_policy(cfg, log=print):
    """The policy ``cfg.model`` describes, as ``(model, tokenizer)``: a saved model directory
    (``model.path``) or the warm-started testbed model, on ``model.device``, in ``model.dtype``,
    dropout off, with gradient checkpointing and LoRA adapters (``model.lora``) when asked."""
    from explorl.policy.model import load_pretrained
    if cfg.model.path:
        model, tokenizer = load_pretrained(cfg.model.path, cfg.model.dtype, log)
    else:
        from explorl.train.warmup import warmup
        model, tokenizer = warmup(cfg, log=log)
    return prepare(model, cfg.model, cfg.seed, log), tokenizer


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
    from explorl.train.parallel import resolve_device
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
