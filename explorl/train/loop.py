"""The training loop. One step reads top to bottom:

curriculum picks problems → budget gives each a rollout count → engine samples →
verifier scores → advantage (estimator, then shapers) → augment → objective → optimizer step →
feedback (``observe``) to every plug-in.

Every stage is timed (``time/<stage>``, exclusive of the stages nested in it) and ``time/step``
is the wall clock of the whole step, so the stages add up to it.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from explorl.batch import ON_POLICY, RolloutRequest
from explorl.eval.evaluate import evaluate
from explorl.explore.base import StepStats
from explorl.policy import load_policy_and_reference, make_engine
from explorl.policy import prompts
from explorl.policy.device import resolve_device
from explorl.policy.engine import RolloutEngine
from explorl.policy.lora import AdaptersOff, base_fingerprint, is_lora, load_adapters
from explorl.policy.reference import reference_component
from explorl.tasks import TaskMix
from explorl.tasks.encoding import check_encodable
from explorl.tasks.guard import FaultLedger, GuardedVerifier
from explorl.train import checkpoint
from explorl.train.faults import crash_point
from explorl.train.guide_context import before_training_context, guide_context
from explorl.train.logging import RunLogger, StageClock, peak_memory, reset_peak_memory
from explorl.train.optim import build_optimizer
from explorl.train.parallel import DataParallel
from explorl.train.plugins import Plugins
from explorl.train.run_folder import RunFolder
from explorl.train.update import (
    NonFiniteGuard,
    NonFiniteTraining,
    optimise,
    recompute_old_logp,
    reference_kl,
    reference_logp,
)


class Trainer:
    def __init__(self, cfg, out_dir, resume: bool = False, progress: bool = True, log=print):
        # under torchrun, every rank runs this loop; rank 0 alone writes and speaks
        self.dp = DataParallel(cfg.train.parallel, resolve_device(cfg.model.device))
        if not self.dp.is_main:
            log, progress = _quiet, False
        self.cfg, self.out, self.log, self.progress = cfg, Path(out_dir), log, progress
        # with variable rollout counts, the order of some CPU reductions follows the batch shape;
        # deterministic kernels keep "same config and seed, same run" exact across processes
        torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
        torch.manual_seed(cfg.seed)  # dropout (LoRA's) draws from the global generator; a resume restores it
        self.tasks = TaskMix.from_config(cfg.tasks)
        self.plugins = Plugins.from_config(cfg)
        self.reference = reference_component(cfg)  # what KL-type terms measure against, where the policy starts
        self.needs = self.plugins.needs() | self.reference.needs
        self.folder = RunFolder(self.out, cfg, resume, writer=self.dp.is_main, log=log)
        self.folder.check()  # before any work, again under the lock below
        v = cfg.verify
        self.verifier = GuardedVerifier(self.tasks, v.timeout, v.isolate)
        if v.check_at_start:
            self.verifier.check_sources()
        self.model, self.tokenizer, reference_model = load_policy_and_reference(
            cfg, log, self.reference, with_reference=bool(self.needs & {"ref_logp", "ref_model"}))
        if self.reference.members:  # a reference made of other models: say what it is and where the policy starts
            for line in [self.reference.describe(), *self.reference.warnings(self.plugins.needs())]:
                log(line)
        self.prompt_format = prompts.for_config(cfg, self.tokenizer)
        check_encodable(self.tasks, self.tokenizer, getattr(self.model.config, "max_position_embeddings", None),
                        cfg.train.max_new_tokens, prompt_format=self.prompt_format)
        self.engine = make_engine(cfg, self.model, self.tokenizer, self.prompt_format)
        self._check_thinking()
        self.ref_engine = None
        if self.needs & {"ref_logp", "ref_model"}:
            if reference_model is not None:  # a reference other than the start (a soup): its own frozen model
                self.ref_engine = RolloutEngine(reference_model, self.tokenizer, self.engine.forward_backend,
                                                self.prompt_format)
            elif is_lora(self.model):  # the base is the same model with its adapters off: no second copy
                self.ref_engine = AdaptersOff(self.engine)
            else:
                ref = copy.deepcopy(self.model).eval().requires_grad_(False)
                self.ref_engine = RolloutEngine(ref, self.tokenizer, self.engine.forward_backend, self.prompt_format)
        # a LoRA checkpoint holds the adapters only: the base it needs is recorded by its weights' hash
        self.base_fingerprint = base_fingerprint(self.model) if is_lora(self.model) else None
        # the model the optimizer steps: the policy itself, or its FSDP shards (the policy then is
        # the rollout copy that samples and serves the plug-ins; explorl.train.fsdp)
        self.sharded, self.train_engine = None, self.engine
        if cfg.train.parallel == "fsdp":
            from explorl.train.fsdp import ShardedTraining
            self.sharded = ShardedTraining(self.model, getattr(torch, cfg.model.dtype))
            self.train_engine = RolloutEngine(self.sharded.model, self.tokenizer, "hf", self.prompt_format)
        self.optimizer = build_optimizer(self.sharded.model if self.sharded else self.model, cfg.train.lr,
                                         cfg.train.weight_decay)
        self.nonfinite = NonFiniteGuard(cfg.train.max_nonfinite_steps, log=log)
        self._faults_logged = [0]
        self._ledger = None
        self.plugins.curriculum.bind(self.tasks, cfg.seed)
        for teacher in (self.plugins.teachers or {}).values():
            teacher.bind(self.tasks, self.engine, self.verify_texts)
        self.step, self.tokens, self._calls = 0, 0, 0
        self.teacher_tokens = 0  # tokens of teacher and reference rows (not the policy's: not in the budget)
        self._before_training_metrics = {}
        # every input is checked: only now is the run folder created and written
        self.folder.claim()
        self.dp.barrier()  # rank 0 has checked the folder before any rank reads from it
        if resume:
            self._resume()
        self.folder.store_config()

    def _check_thinking(self) -> None:
        """A decoding that decides its steps itself (soft tokens) needs the built-in engine in one process."""
        if self.plugins.decoding.thinking(0) is None:
            return
        name = self.plugins.decoding.registered_name
        if not self.engine.soft_tokens:
            raise ValueError(f"decoding {name} feeds soft tokens, which only the built-in engine does: set "
                             f"model.backend to auto, fast or hf (got {self.cfg.model.backend})")
        if self.dp.enabled:
            raise ValueError(f"decoding {name} feeds soft tokens, which data-parallel sampling does not do yet: "
                             f"set train.parallel: none")
        if not self.plugins.rollout.soft_tokens:
            raise ValueError(f"decoding {name} feeds soft tokens, which rollout "
                             f"{self.plugins.rollout.registered_name} does not (tree rollouts decode discrete "
                             f"tokens): use rollout: flat")

    # ---- one step ------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg, P = self.cfg.train, self.plugins
        step, m = self.step + 1, {}
        clock = StageClock(m)
        self._calls = 0
        self._ledger = self._new_ledger()
        reset_peak_memory(self.engine.device)
        start = time.perf_counter()
        with clock("curriculum"):
            problems, metrics = P.curriculum.next(cfg.problems_per_step)
        m.update(metrics)
        with clock("allocate"):
            counts, metrics = P.budget.allocate(problems, cfg.problems_per_step * cfg.rollouts_per_problem)
        m.update(metrics)

        def sample(probs, ns, temps=None):
            return self._sample(probs, ns, step, m, clock, temps)

        def draw(k):
            with clock("curriculum"):
                return P.curriculum.next(k)[0]

        with clock("allocate"):  # a budget's own work in collect (filtering, refills); sampling is nested
            batch = P.budget.collect(sample, problems, counts, draw=draw)
        if P.guidance:
            with clock("guide"):
                ctx = guide_context(self, step, m, clock, sample)
                for method in P.guidance:
                    batch, metrics = method.guide(batch, ctx)
                    m.update(metrics)
        with clock("advantage"):
            adv, metrics = self._advantages(batch)
        m.update(metrics)
        batch.advantages = adv
        with clock("augment"):
            for component in P.all():
                batch, metrics = component.augment(batch, sample)
                m.update(metrics)
        with clock("update"):
            if P.freezes_policy():  # the language model stays as it is (a component trains its own module)
                m["loss/policy_frozen"] = 1.0
            else:
                self._update(batch, step, m)
        with clock("observe"):
            stats = self._stats(step, batch)
            for component in P.all():
                m.update(component.observe(stats))
        m["time/step"] = time.perf_counter() - start
        self.step = step
        m.update(self._ledger.metrics())
        m = self._summary(m, batch)
        for key, value in self._before_training_metrics.items():  # the first step carries that phase's counts
            m[key] = m.get(key, 0) + value
        self._before_training_metrics = {}
        return m

    def _update(self, batch, step, m) -> None:
        cfg = self.cfg.train
        if cfg.recompute_old_logp:  # π_old from the trainer's forward; the sampler's stays behaviour_logp
            batch.old_logp = recompute_old_logp(self.train_engine, batch, cfg.micro_batch_size)
        ref = reference_logp(self.ref_engine, batch) if "ref_logp" in self.needs else None
        if ref is not None:
            m["ref/kl"] = reference_kl(batch, ref)
        m.update(optimise(batch, self.train_engine, self.plugins, self.optimizer, self.cfg, step, self.needs, ref,
                          guard=self.nonfinite, dp=self.dp))
        if self.sharded:
            self.sharded.sync(self.model)
        self.engine.weights_updated()

    def _sample(self, problems, counts, step, m, clock=None, temperatures=None):
        clock = clock or StageClock(m)
        if getattr(self, "_ledger", None) is None:
            self._ledger = self._new_ledger()
        decoding = self.plugins.decoding
        if temperatures is None:
            temperatures = decoding.temperatures(step, self.cfg.train.max_new_tokens)
        elif isinstance(temperatures, (int, float)):  # one temperature over the whole response
            temperatures = [float(temperatures)] * self.cfg.train.max_new_tokens
        intervention = decoding.intervention(step)  # the engine applies it while sampling only
        self._calls += 1  # distinct seeds for repeated sampling in a step
        seed = (self.cfg.seed * 1_000_003 + step) * 1009 + self._calls
        if self.dp.enabled:  # this rank samples and verifies its share; the whole batch comes back
            def score(probs, texts):
                with clock("verify"):  # nested in gen, which excludes it
                    return self.verifier.score(probs, [p.completed(t) for p, t in zip(probs, texts)])

            with clock("gen"):
                batch, faults = self.dp.rollout(self.engine, problems, counts, temperatures, decoding.top_p, seed,
                                                score, max_rows=self.cfg.train.rollout_batch_size,
                                                intervention=intervention)
            self._ledger.add(batch.size, faults)
            return self._count_tokens(batch, step, m)
        def score(probs, texts):
            with clock("verify"):  # nested in gen, which excludes it
                rewards, faults = self.verifier.score(probs, [p.completed(t) for p, t in zip(probs, texts)])
                self._ledger.add(len(rewards), faults)
                return rewards

        request = RolloutRequest(engine=self.engine, problems=problems, counts=counts, temperatures=temperatures,
                                 top_p=decoding.top_p, seed=seed, score=score,
                                 max_rows=self.cfg.train.rollout_batch_size, thinking=decoding.thinking(step),
                                 intervention=intervention)
        with clock("gen"):
            batch, metrics = self.plugins.rollout.sample(request)
        self.plugins.rollout.accumulate(m, metrics)
        return self._count_tokens(batch, step, m)

    def _count_tokens(self, batch, step, m):
        self._ledger.check(f"step {step}")
        # every generated token counts toward the budget, also those of rollouts later dropped; a
        # prefix that tree rollouts share was generated once and counts once
        self.tokens += batch.sampled_tokens
        m["tokens/step"] = m.get("tokens/step", 0) + batch.sampled_tokens
        return batch

    def verify_texts(self, problems, texts) -> list[float]:
        """Rewards of ``texts`` (a stored prefix included) under guard; faults go to the step's ledger."""
        rewards, faults = self.verifier.score(problems, [p.completed(t) for p, t in zip(problems, texts)])
        if getattr(self, "_ledger", None) is not None:
            self._ledger.add(len(rewards), faults)
            self._ledger.check(f"step {self.step + 1}")
        return rewards

    def _new_ledger(self) -> FaultLedger:
        v = self.cfg.verify
        return FaultLedger(self.tasks.names, v.max_error_share, v.log_first, self.log, self._faults_logged)

    def _advantages(self, batch):
        groups = batch.groups()
        groups.extras.update(batch=batch, engine=self.engine, ref_engine=self.ref_engine)
        adv, estimated, metrics = None, None, {}
        for shaper in self.plugins.advantages:
            adv, m = shaper.compute(groups, adv)
            metrics.update(m)
            estimated = adv if shaper.kind == "estimator" else estimated
        per_token = groups.extras.get("token_advantages")
        if per_token is not None:  # an estimator's advantage that varies along a response; shapers add theirs
            shaped = batch.from_groups(adv).float() - batch.from_groups(estimated).float()
            batch.token_advantages = (per_token + shaped[:, None]) * batch.mask
        return batch.from_groups(adv).float(), metrics

    def _stats(self, step, batch) -> StepStats:
        """Per-problem rewards and advantages of the policy's own rows (teacher, replayed and
        demonstration rows would bias success rates); the whole batch is in ``extras``."""
        rewards = [[] for _ in batch.problems]
        advs = [[] for _ in batch.problems]
        own = batch.own_rows.tolist()
        for g, r, a, mine in zip(batch.group.tolist(), batch.rewards.tolist(), batch.advantages.tolist(), own):
            if mine:
                rewards[g].append(r)
                advs[g].append(a)
        entropy = float((batch.entropy * batch.mask).sum() / batch.mask.sum().clamp_min(1))
        return StepStats(step=step, problems=batch.problems, rewards=rewards, advantages=advs,
                         entropy=entropy, tokens=batch.tokens,
                         extras={"batch": batch, "engine": self.engine, "tasks": self.tasks})

    def _summary(self, m, batch) -> dict:
        groups = batch.groups()
        solved = (groups.rewards * groups.mask).sum(1) / groups.counts.clamp_min(1)
        own = batch.own_rows
        if not bool((batch.row_kind == ON_POLICY).all()):
            m.update({f"rows/{kind}": n for kind, n in batch.kind_counts().items()})
        if self.teacher_tokens:
            m["tokens/teacher_total"] = self.teacher_tokens
        m.update({
            "reward/mean": float(batch.rewards[own].mean()) if own.any() else float("nan"),
            "reward/pass_rate": float((batch.rewards[own] >= 1.0).float().mean()) if own.any() else float("nan"),
            "reward/frac_all_correct": float((solved >= 1.0).float().mean()),
            "reward/frac_all_wrong": float((solved <= 0.0).float().mean()),
            # share of rollouts that carry a policy gradient (Knapsack RL's "effective gradient ratio")
            "adv/frac_rollouts_nonzero": float((batch.advantages.abs() > 1e-8).float().mean()),
            "entropy/rollout": float((batch.entropy * batch.mask).sum() / batch.mask.sum().clamp_min(1)),
            "rollouts": batch.size,
            "rollouts/per_problem": list(batch.counts),
            "tokens/total": self.tokens,
            "response_length/mean": float(batch.lengths.float().mean()),
            "perf/tokens_per_s": m["tokens/step"] / max(m.get("time/gen", 0), 1e-9),
        })
        m.update(peak_memory(self.engine.device))
        return m

    # ---- the run -------------------------------------------------------------------------
    def run(self, steps: int | None = None) -> dict:
        total = steps or self.cfg.train.steps
        self.folder.acquire()
        try:
            return self._run(total)
        finally:
            self.close()

    def _run(self, total: int) -> dict:
        results = self._read_eval()
        if "start" not in results:
            results["start"] = self._start_evaluation()
            crash_point("eval.start_computed")
            self._write_eval(results)
        if self.step == 0 and self._before_training() and "after_phase" not in results:
            # a phase before RL (SFT-then-RL) changed the model: measure "tokens to a level" from here
            results["after_phase"] = self.evaluate()
            self._write_eval(results)
        logger = (RunLogger(self.out, self.step, total, self.progress, warn=self.log, config=self.cfg)
                  if self.dp.is_main else _NoLogger())
        try:
            while self.step < total and not self._token_budget_spent():
                before = self.tokens
                metrics = self.train_step()
                start = time.perf_counter()
                held_out = self._heldout(before)
                if held_out:
                    metrics.update(held_out, **{"time/eval": time.perf_counter() - start})
                logger.log(self.step, metrics)
                crash_point("metrics.logged")
                if self.step % self.cfg.train.checkpoint_every == 0 or self.step == total:
                    logger.sync()
                    self.save()
        finally:
            logger.close()
        def unsaved() -> bool:  # e.g. stopped by the token budget
            latest = checkpoint.latest(self.out, warn=self.log)
            return latest is None or latest.name != f"step_{self.step:06d}"

        if self.dp.from_main(unsaved):  # rank 0's answer: saving is a collective under FSDP
            self.save()
        results["end"] = self.evaluate()
        crash_point("eval.end_computed")
        self._write_eval(results)
        return results

    def _start_evaluation(self) -> dict:
        """The start evaluation: shared by runs with the same starting point (``eval.shared``),
        or computed and shared. Rank 0 decides, so every rank evaluates or none does."""
        from explorl.eval.shared import load_start_eval, start_eval_path, store_start_eval
        shared = self.dp.from_main(lambda: load_start_eval(self.cfg, self.log))
        if shared is not None:
            self.log(f"start evaluation: shared ({start_eval_path(self.cfg)})")
            return shared
        results = self.evaluate()
        if self.dp.is_main:
            store_start_eval(self.cfg, results)
        return results

    def _before_training(self) -> bool:
        """Each component's phase before the first step (SFT-then-RL, a decoding method's
        calibration); runs again on a resume from no checkpoint, and is deterministic, so the
        run is the same. True when a guidance method's phase ran (it changed the model)."""
        m = {}
        clock = StageClock(m)
        ctx = before_training_context(self, m, clock, lambda *a, **k: self._sample(*a[:2], 0, m, clock, *a[2:]))
        phase = {}
        guidance = list(self.plugins.guidance)  # first: their phases change the weights the others see
        for method in guidance + [c for c in self.plugins.all() if c not in guidance]:
            done = method.before_training(ctx)
            if done:
                self.log(f"{method.registered_name} before training: "
                         + ", ".join(f"{k} {v:g}" for k, v in done.items()))
                if method in guidance:
                    phase.update(done)
        # its token counts (teacher tokens, what a model teacher generated, rollouts it sampled) and
        # what each guidance method reported of its phase (e.g. guide/sft_steps: whether it ran) are
        # logged with step 1, so the steps' tokens/step still add up to tokens/total
        self._before_training_metrics = {**{k: v for k, v in m.items()
                                            if k.startswith("tokens/teacher") or k == "tokens/step"}, **phase}
        return bool(phase)

    def close(self) -> None:
        """Stop the verifier process and release the run folder."""
        self.verifier.close()
        self.engine.close()
        self.folder.release()
        self.dp.close()

    def _heldout(self, before: int) -> dict:
        """Held-out pass@k when this step crossed a multiple of ``eval.every_tokens``
        (the last step is evaluated anyway, into eval.json "end")."""
        every = self.cfg.eval.every_tokens
        if not every or self.tokens // every == before // every or self._token_budget_spent():
            return {}
        res = self.evaluate(samples=self.cfg.eval.every_samples)
        out = {f"heldout/{k}": v["all"] for k, v in res.items() if k.startswith("pass@") or k == "entropy"}
        out.update({f"heldout/pass@1/{src}": v for src, v in res["pass@1"].items() if src != "all"})
        # per problem, for intervals that resample problems (explorl.compare.stats)
        out.update({"heldout/samples": res["samples"], "heldout/correct": res["per_problem"]["correct"]})
        return out

    def _token_budget_spent(self) -> bool:
        limit = self.cfg.train.max_tokens
        return limit is not None and self.tokens >= limit

    def evaluate(self, samples: int | None = None) -> dict:
        """Held-out evaluation with ``eval.samples`` samples per problem (``samples``: fewer, for
        the cheaper evaluations along the way; only the ks up to it)."""
        e = self.cfg.eval
        samples = samples or e.samples
        ks = [k for k in e.ks if k <= samples] or [1]
        sets = self.tasks.eval_sets(e.problems_per_source, seed=0)
        ledger = self._new_ledger()
        results = evaluate(self.engine, self.tasks, sets, samples, ks, e.temperature,
                           self.cfg.train.max_new_tokens, seed=e.seed, verifier=self.verifier, ledger=ledger,
                           dp=self.dp, thinking=self.plugins.decoding.thinking(self.step, evaluating=True))
        ledger.check("an evaluation")
        results["verify_faults"] = ledger.faults
        return results

    def _read_eval(self) -> dict:
        """eval.json as rank 0 reads it (every rank must agree on which evaluations are left)."""
        return self.dp.from_main(self.folder.read_eval)

    def _write_eval(self, results: dict) -> None:
        self.folder.write_eval(results)

    # ---- checkpoints ---------------------------------------------------------------------
    def save(self) -> None:
        bad = [name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteTraining(f"step {self.step}: weights are not finite ({', '.join(bad[:3])}"
                                    f"{', ...' if len(bad) > 3 else ''}); no checkpoint is written, the last "
                                    f"complete one is kept")
        weights = self.sharded.checkpoint_weights(self.model) if self.sharded else None  # collectives, every rank
        optimizer = self.sharded.optimizer_state(self.optimizer) if self.sharded else self.optimizer.state_dict()
        state = {"step": self.step, "tokens": self.tokens, "teacher_tokens": self.teacher_tokens,
                 "optimizer": optimizer,
                 "plugins": self.plugins.state_dict(), "nonfinite_in_a_row": self.nonfinite.in_a_row}
        if self.base_fingerprint is not None:
            state["base_model_sha256"] = self.base_fingerprint
        if not self.dp.is_main:  # every rank holds the same state; rank 0 writes it
            return
        checkpoint.save(self.out, self.step, self.model, self.tokenizer, state, weights=weights)

    def _resume(self) -> None:
        # rank 0 picks the checkpoint (and logs what it skips); every rank loads that one
        path = self.dp.from_main(lambda: checkpoint.latest(self.out, warn=self.log))
        if path is None:
            self.log(f"resume: no complete checkpoint in {self.out / 'ckpt'}; starting from step 0")
            return
        if is_lora(self.model):
            checkpoint.check_base(path, self.base_fingerprint)
            load_adapters(self.model, path / "model")
        else:
            from transformers import AutoModelForCausalLM
            saved = AutoModelForCausalLM.from_pretrained(path / "model", dtype=torch.float32)
            self.model.load_state_dict(saved.state_dict())
            if self.sharded:
                self.sharded.load_full_weights(saved.state_dict())
        state = checkpoint.load_state(path)
        if self.sharded:
            self.sharded.load_optimizer_state(self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.plugins.load_state_dict(state["plugins"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.teacher_tokens = state.get("teacher_tokens", 0)
        self.nonfinite.in_a_row = state.get("nonfinite_in_a_row", 0)
        self.log(f"resumed from {path} at step {self.step}")


def _quiet(*args, **kwargs) -> None:
    """What ranks other than 0 print: nothing (rank 0 speaks for the run)."""


class _NoLogger:
    def log(self, step, metrics) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass
