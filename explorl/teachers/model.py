"""``model``: a saved model folder, sampled by explorl's engine, as a teacher.

For a problem it samples ``samples`` responses (temperature ``temperature``; the run's prompt
template, rendered with the teacher's own tokenizer) and returns the distinct ones the verifier
scores 1. Those generated tokens are not the policy's: they are counted as
``tokens/teacher_generated``, beside the policy's budget.
"""
from __future__ import annotations

from explorl.registry import register
from explorl.teachers import Teacher


@register("teacher", "model", paper="a saved model folder, sampled by the engine (its correct samples)")
class ModelTeacher(Teacher):
    def __init__(self, path: str, samples: int = 8, temperature: float = 1.0, max_new_tokens: int | None = None,
                 seed: int = 0):
        if samples < 1 or not temperature > 0:
            raise ValueError("teacher model: samples must be >= 1 and temperature > 0")
        self.path, self.samples, self.temperature = path, samples, temperature
        self.max_new_tokens, self.seed, self.calls = max_new_tokens, seed, 0
        self.engine = None

    state_keys = ("calls",)

    def bind(self, tasks, engine, verify) -> None:
        from explorl.policy.engine import RolloutEngine
        from explorl.policy.model import load_pretrained
        from explorl.policy.prompts import PromptFormat
        model, tokenizer = load_pretrained(self.path)
        policy_format = engine.prompt_format
        fmt = PromptFormat(policy_format.template, policy_format.system, tokenizer, f"teacher model {self.path!r}")
        self.engine = RolloutEngine(model.eval(), tokenizer, "auto", fmt)
        self.verify = verify
        self.default_max_new = engine.max_new_tokens if hasattr(engine, "max_new_tokens") else 64

    def solutions(self, problem, n, ctx=None):
        max_new = self.max_new_tokens or (ctx.max_new_tokens if ctx is not None else self.default_max_new)
        self.calls += 1
        batch = self.engine.rollout([problem], [self.samples], [self.temperature] * max_new,
                                    seed=self.seed * 1_000_003 + self.calls)
        if ctx is not None:
            ctx.count_generated(batch.tokens)
        rewards = self.verify([problem] * batch.size, batch.texts)
        out = []
        for text, reward in zip(batch.texts, rewards):
            if reward >= 1.0 and text not in out:
                out.append(text)
        return out[:n]
