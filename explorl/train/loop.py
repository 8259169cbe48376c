"""The training loop. One step reads top to bottom:

curriculum picks problems → budget gives each a rollout count → engine samples →
verifier scores → advantage (estimator, then shapers) → objective → optimizer step →
feedback (``observe``) to every plug-in.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
import yaml

from explorl.eval.evaluate import evaluate
from explorl.explore.base import StepStats
from explorl.policy import load_policy
from explorl.policy.engine import RolloutEngine
from explorl.tasks import TaskMix
from explorl.train import checkpoint
from explorl.train.logging import RunLogger, timer
from explorl.train.plugins import Plugins
from explorl.train.update import optimise, reference_logp


class Trainer:
    def __init__(self, cfg, out_dir, resume: bool = False, progress: bool = True, log=print):
        self.cfg, self.out, self.log, self.progress = cfg, Path(out_dir), log, progress
        # with variable rollout counts, the order of some CPU reductions follows the batch shape;
        # deterministic kernels keep "same config and seed, same run" exact across processes
        torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
        self.tasks = TaskMix.from_config(cfg.tasks)
        self.plugins = Plugins.from_config(cfg)
        self.needs = self.plugins.needs()
        self.model, self.tokenizer = load_policy(cfg, log=log)
        self.engine = RolloutEngine(self.model, self.tokenizer, cfg.model.backend)
        self.ref_engine = None
        if self.needs & {"ref_logp", "ref_model"}:
            ref = copy.deepcopy(self.model).eval().requires_grad_(False)
            self.ref_engine = RolloutEngine(ref, self.tokenizer, cfg.model.backend)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay)
        self.plugins.curriculum.bind(self.tasks, cfg.seed)
        self.step, self.tokens, self._calls = 0, 0, 0
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        elif checkpoint.latest(self.out) is not None:
            raise FileExistsError(f"{self.out} already holds a run: pass --resume to continue it, "
                                  f"or choose another --out")
        checkpoint.write_text_atomic(self.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # ---- one step ------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg, P = self.cfg.train, self.plugins
        step, m = self.step + 1, {}
        self._calls = 0
        problems, metrics = P.curriculum.next(cfg.problems_per_step)
        m.update(metrics)
        counts, metrics = P.budget.allocate(problems, cfg.problems_per_step * cfg.rollouts_per_problem)
        m.update(metrics)
        sample = lambda probs, ns, temps=None: self._sample(probs, ns, step, m, temps)  # noqa: E731
        batch = P.budget.collect(sample, problems, counts, draw=lambda k: P.curriculum.next(k)[0])
        adv, metrics = self._advantages(batch)
        m.update(metrics)
        batch.advantages = adv
        for component in P.all():
            batch, metrics = component.augment(batch, sample)
            m.update(metrics)
        with timer(m, "time/update"):
            ref = reference_logp(self.ref_engine, batch) if "ref_logp" in self.needs else None
            m.update(optimise(batch, self.engine, P, self.optimizer, self.cfg, step, self.needs, ref))
        stats = self._stats(step, batch)
        for component in P.all():
            m.update(component.observe(stats))
        self.step = step
        return self._summary(m, batch)

    def _sample(self, problems, counts, step, m, temperatures=None):
        decoding = self.plugins.decoding
        if temperatures is None:
            temperatures = decoding.temperatures(step, self.cfg.train.max_new_tokens)
        elif isinstance(temperatures, (int, float)):  # one temperature over the whole response
            temperatures = [float(temperatures)] * self.cfg.train.max_new_tokens
        self._calls += 1  # distinct seeds for repeated sampling in a step
        with timer(m, "time/gen"):
            batch = self.engine.rollout(problems, counts, temperatures, decoding.top_p,
                                        seed=(self.cfg.seed * 1_000_003 + step) * 1009 + self._calls)
        with timer(m, "time/verify"):
            batch.rewards = torch.tensor([self.tasks.verify(problems[g], text)
                                          for g, text in zip(batch.group.tolist(), batch.texts)])
        # every generated token counts toward the budget, also those of rollouts later dropped
        self.tokens += batch.tokens
        m["tokens/step"] = m.get("tokens/step", 0) + batch.tokens
        return batch

    def _advantages(self, batch):
        groups = batch.groups()
        groups.extras.update(batch=batch, engine=self.engine, ref_engine=self.ref_engine)
        adv, metrics = None, {}
        for shaper in self.plugins.advantages:
            adv, m = shaper.compute(groups, adv)
            metrics.update(m)
        return batch.from_groups(adv).float(), metrics

    def _stats(self, step, batch) -> StepStats:
        rewards = [[] for _ in batch.problems]
        advs = [[] for _ in batch.problems]
        for g, r, a in zip(batch.group.tolist(), batch.rewards.tolist(), batch.advantages.tolist()):
            rewards[g].append(r)
            advs[g].append(a)
        entropy = float((batch.entropy * batch.mask).sum() / batch.mask.sum().clamp_min(1))
        return StepStats(step=step, problems=batch.problems, rewards=rewards, advantages=advs,
                         entropy=entropy, tokens=batch.tokens, extras={"batch": batch})

    def _summary(self, m, batch) -> dict:
        step_time = m.get("time/gen", 0) + m.get("time/verify", 0) + m.get("time/update", 0)
        groups = batch.groups()
        solved = (groups.rewards * groups.mask).sum(1) / groups.counts.clamp_min(1)
        m.update({
            "reward/mean": float(batch.rewards.mean()),
            "reward/pass_rate": float((batch.rewards >= 1.0).float().mean()),
            "reward/frac_all_correct": float((solved >= 1.0).float().mean()),
            "reward/frac_all_wrong": float((solved <= 0.0).float().mean()),
            # share of rollouts that carry a policy gradient (Knapsack RL's "effective gradient ratio")
            "adv/frac_rollouts_nonzero": float((batch.advantages.abs() > 1e-8).float().mean()),
            "entropy/rollout": float((batch.entropy * batch.mask).sum() / batch.mask.sum().clamp_min(1)),
            "rollouts": batch.size,
            "rollouts/per_problem": list(batch.counts),
            "tokens/total": self.tokens,
            "response_length/mean": float(batch.lengths.float().mean()),
            "time/step": step_time,
            "perf/tokens_per_s": m["tokens/step"] / max(m.get("time/gen", 0), 1e-9),
        })
        return m

    # ---- the run -------------------------------------------------------------------------
    def run(self, steps: int | None = None) -> dict:
        total = steps or self.cfg.train.steps
        results = self._read_eval()
        if "start" not in results:
            results["start"] = self.evaluate()
            self._write_eval(results)
        logger = RunLogger(self.out, self.step, total, self.progress)
        try:
            while self.step < total and not self._token_budget_spent():
                before = self.tokens
                metrics = self.train_step()
                metrics.update(self._heldout(before))
                logger.log(self.step, metrics)
                if self.step % self.cfg.train.checkpoint_every == 0 or self.step == total:
                    self.save()
        finally:
            logger.close()
        latest = checkpoint.latest(self.out)
        if latest is None or latest.name != f"step_{self.step:06d}":  # e.g. stopped by the token budget
            self.save()
        results["end"] = self.evaluate()
        self._write_eval(results)
        return results

    def _heldout(self, before: int) -> dict:
        """Held-out pass@k when this step crossed a multiple of ``eval.every_tokens``
        (the last step is evaluated anyway, into eval.json "end")."""
        every = self.cfg.eval.every_tokens
        if not every or self.tokens // every == before // every or self._token_budget_spent():
            return {}
        res = self.evaluate()
        out = {f"heldout/{k}": v["all"] for k, v in res.items() if k.startswith("pass@") or k == "entropy"}
        out.update({f"heldout/pass@1/{src}": v for src, v in res["pass@1"].items() if src != "all"})
        return out

    def _token_budget_spent(self) -> bool:
        limit = self.cfg.train.max_tokens
        return limit is not None and self.tokens >= limit

    def evaluate(self) -> dict:
        e = self.cfg.eval
        sets = self.tasks.eval_sets(e.problems_per_source, seed=0)
        return evaluate(self.engine, self.tasks, sets, e.samples, e.ks, e.temperature,
                        self.cfg.train.max_new_tokens, seed=e.seed)

    def _read_eval(self) -> dict:
        path = self.out / "eval.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _write_eval(self, results: dict) -> None:
        checkpoint.write_text_atomic(self.out / "eval.json", json.dumps(results, indent=2))

    # ---- checkpoints ---------------------------------------------------------------------
    def save(self) -> None:
        state = {"step": self.step, "tokens": self.tokens, "optimizer": self.optimizer.state_dict(),
                 "plugins": self.plugins.state_dict()}
        checkpoint.save(self.out, self.step, self.model, self.tokenizer, state)

    def _resume(self) -> None:
        path = checkpoint.latest(self.out)
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.out / 'ckpt'}")
        from transformers import AutoModelForCausalLM
        saved = AutoModelForCausalLM.from_pretrained(path / "model")
        self.model.load_state_dict(saved.state_dict())
        state = checkpoint.load_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.plugins.load_state_dict(state["plugins"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.log(f"resumed from {path} at step {self.step}")
