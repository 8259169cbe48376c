"""Models, tokenizers and the rollout engine."""


def load_policy(cfg, log=print):
    """The policy named by ``cfg.model``: a saved model directory, or the warm-started testbed model."""
    from explorl.policy.model import load_pretrained
    if cfg.model.path:
        return load_pretrained(cfg.model.path, cfg.model.dtype)
    from explorl.train.warmup import warmup
    return warmup(cfg, log=log)
