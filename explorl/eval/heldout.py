"""A model's held-out evaluation as a config sets it up (``explorl eval``, and studies that
evaluate a frozen model under several decodings): the engine, the held-out sets of
``eval.problems_per_source``, the ks up to the sample count, and one call per decoding."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def held_out_evaluation(cfg, model, tokenizer, samples: int | None = None):
    """Yields ``(run, ks)``: ``run(thinking=None, on_batch=None)`` evaluates the model on the
    config's held-out sets with ``samples`` per problem (default ``eval.samples``) at the same
    sampling seed every call; the engine is closed on leaving."""
    from explorl.eval.evaluate import evaluate
    from explorl.policy import make_engine
    from explorl.policy.device import resolve_device
    from explorl.policy.prompts import for_config
    from explorl.tasks import TaskMix
    tasks, e = TaskMix.from_config(cfg.tasks), cfg.eval
    samples = samples or e.samples
    ks = [k for k in e.ks if k <= samples]
    sets = tasks.eval_sets(e.problems_per_source)
    engine = make_engine(cfg, model.to(resolve_device(cfg.model.device)), tokenizer, for_config(cfg, tokenizer))

    def run(thinking=None, on_batch=None) -> dict:
        return evaluate(engine, tasks, sets, samples, ks, e.temperature, cfg.train.max_new_tokens, seed=e.seed,
                        thinking=thinking, on_batch=on_batch)
    try:
        yield run, ks
    finally:
        engine.close()
