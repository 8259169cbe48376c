"""``explorl bench trl``: time per GRPO step of explorl against TRL's ``GRPOTrainer``.

Both start from the same weights (the warm-started testbed model, saved with
``save_pretrained`` to a temporary folder and loaded from there by each), see the same
prompts in the same order (a fixed list of problems from the config's task mix, rendered as
the policy reads them (``prompt.template``: a chat template is applied here) and given to TRL
as plain-string prompts in a ``datasets.Dataset``), score with the same verifier (wrapped as a
TRL reward function that maps the prompt text back to its problem) and share every training
setting that both expose: prompts per step, group size, max completion length, temperature 1,
top-p 1, learning rate, weight decay, gradient clipping, no KL term (beta 0, no reference
model) and one optimisation pass over each batch (explorl ``ppo_epochs=1, minibatches=1``;
TRL ``num_iterations=1, steps_per_generation=1, gradient_accumulation_steps=1`` with
``per_device_train_batch_size`` = completions per step). The two trainers alternate step by
step (an explorl step runs from a TRL callback, outside TRL's timing), so load from other
processes hits both alike; the first step of each is a warm-up, reported apart, and the
speedup is the ratio of median step times. Settings that still differ are printed too.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from explorl.bench import fixed_problems, machine_line, note, prompt_text, table
from explorl.bench.memory import PeakMemory
from explorl.policy.device import resolve_device

INSTALL_HINT = "explorl bench trl needs TRL: pip install -e .[bench]"

# explorl's train.loss_agg_mode -> TRL's loss_type with the same token aggregation
LOSS_TYPES = {"token-mean": "dapo", "seq-mean-token-mean": "grpo", "seq-mean-token-sum-norm": "dr_grpo"}


def _quiet():
    """Silence TRL / transformers / datasets warnings and progress bars (both are core dependencies)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    for name in ("transformers", "trl", "accelerate", "datasets", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()


def _components(cfg):
    """The explorl plug-ins of ``cfg`` and what TRL setting each one maps to."""
    from explorl.train.plugins import Plugins
    plugins = Plugins.from_config(cfg)
    names = {c.registered_name for c in plugins.all()}
    estimator = plugins.advantages[0]
    policy = next(o for o in plugins.objectives if o.kind == "policy")
    return plugins, names, estimator, policy


class ExplorlSteps:
    """explorl's ``Trainer`` on the fixed prompt list, one timed ``train_step`` per call."""

    def __init__(self, cfg, problems, out_dir: Path):
        from explorl.train.loop import Trainer
        P = cfg.train.problems_per_step
        chunks = iter([problems[i:i + P] for i in range(0, len(problems), P)])
        self.trainer = Trainer(cfg, out_dir, progress=False, log=lambda *a, **k: None)
        # the same prompts, in the same order as TRL's (unshuffled) dataset
        self.trainer.plugins.curriculum.next = lambda n: (next(chunks), {})
        self.result = {"times": [], "gen": [], "reward": [], "tokens": []}

    def __call__(self) -> None:
        start = time.perf_counter()
        m = self.trainer.train_step()
        self.result["times"].append(time.perf_counter() - start)
        self.result["gen"].append(m["time/gen"])
        self.result["reward"].append(m["reward/mean"])
        self.result["tokens"].append(m["tokens/step"])


def run_interleaved(model_dir: Path, problems, tasks, cfg, steps: int, scale_rewards: str, eps_low, eps_high,
                    explorl_step: ExplorlSteps, out_dir: Path, render=prompt_text, memory=None) -> dict:
    """Train TRL for ``steps + 1`` steps, running one explorl step after each TRL step (so load
    from other processes hits both alike); explorl's time is excluded from TRL's."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    t = cfg.train
    by_prompt = {render(p): p for p in problems}
    rewards, tokens = [], []

    def reward(prompts, completions, completion_ids=None, **kw) -> list[float]:
        out = [tasks.verify(by_prompt[p], c) for p, c in zip(prompts, completions)]
        rewards.append(sum(out) / max(len(out), 1))
        # TRL's completion ids run up to and including the first EOS, as explorl counts them
        tokens.append(sum(len(ids) for ids in completion_ids) if completion_ids is not None else None)
        return out

    class Interleave(TrainerCallback):
        """Times each TRL step and runs an explorl step after it; with ``memory`` (a
        ``PeakMemory``), each side's peak over its timed steps (the warm-up step is left out)."""

        def __init__(self):
            self.times, self.start, self.stretch = [], None, None

        def _open(self, name, after_steps):
            """Measure ``name``'s next step once ``after_steps`` TRL steps are done (its warm-up is not)."""
            self.stretch = memory.measure(name) if memory is not None and len(self.times) >= after_steps else None
            if self.stretch is not None:
                self.stretch.__enter__()

        def _close(self):
            if self.stretch is not None:
                self.stretch.__exit__(None, None, None)
                self.stretch = None

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.start)
            self._close()
            self._open("explorl", 2)  # explorl's first step, after TRL's first, is its warm-up
            explorl_step()
            self._close()
            self._open("TRL GRPOTrainer", 1)
            self.start = time.perf_counter()

    timer = Interleave()
    on_cpu = resolve_device(cfg.model.device).type == "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, cfg.model.dtype))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    dataset = Dataset.from_dict({"prompt": [render(p) for p in problems]})
    args = GRPOConfig(
        output_dir=str(out_dir), use_cpu=on_cpu, bf16=False, fp16=False, gradient_checkpointing=False,
        report_to="none", use_vllm=False, save_strategy="no", logging_strategy="no", disable_tqdm=True,
        log_level="error", seed=cfg.seed, data_seed=cfg.seed, shuffle_dataset=False,
        max_steps=steps + 1, num_generations=t.rollouts_per_problem,
        per_device_train_batch_size=t.problems_per_step * t.rollouts_per_problem,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=t.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, loss_type=LOSS_TYPES[t.loss_agg_mode], scale_rewards=scale_rewards,
        epsilon=eps_low, epsilon_high=eps_high,
        learning_rate=t.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, optim="adamw_torch", dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[timer])
    for callback in (PrinterCallback, ProgressCallback):  # the end-of-training metrics dict, progress bars
        trainer.remove_callback(callback)
    gen_times = []
    generate = trainer._generate

    def timed_generate(*a, **k):
        start = time.perf_counter()
        try:
            return generate(*a, **k)
        finally:
            gen_times.append(time.perf_counter() - start)

    trainer._generate = timed_generate
    with contextlib.redirect_stdout(sys.stderr):  # anything else TRL prints stays off the results
        trainer.train()
    timer._close()
    return {"times": timer.times, "gen": gen_times, "reward": rewards, "tokens": tokens}


def _row(name, r, steps):
    timed = r["times"][1:steps + 1]
    gen = r["gen"][1:steps + 1]
    mean_reward = statistics.mean(r["reward"][1:]) if len(r["reward"]) > 1 else float("nan")
    tokens = [t for t in r["tokens"][1:steps + 1] if t is not None]
    per_step = statistics.mean(tokens) if tokens else None
    return [name, f"{r['times'][0]:.3f}", f"{statistics.mean(timed):.3f}", f"{statistics.median(timed):.3f}",
            f"{statistics.mean(gen):.3f}" if gen else "-", f"{per_step:.0f}" if per_step else "-",
            f"{per_step / statistics.mean(timed):.0f}" if per_step else "-", f"{mean_reward:.3f}"]


def run(args) -> int:
    if importlib.util.find_spec("trl") is None or importlib.util.find_spec("datasets") is None:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 1
    from explorl.config import config_from_args
    from explorl.policy import load_policy
    from explorl.policy.prompts import for_config
    from explorl.tasks import TaskMix

    machine = machine_line()  # measured before this process starts working
    steps = args.steps if args.steps is not None else 5
    if steps < 1:
        raise ValueError(f"--steps: must be >= 1, got {steps}")
    args = copy.copy(args)
    args.steps = None  # --steps is the number of timed steps here, not train.steps
    cfg = config_from_args(args)
    t = cfg.train
    plugins, names, estimator, policy = _components(cfg)
    scale_by_std = getattr(estimator, "scale_by_std", True)
    eps_low, eps_high = getattr(policy, "eps_low", 0.2), getattr(policy, "eps_high", 0.2)
    _quiet()
    model, tokenizer = load_policy(cfg, log=note)
    prompt_format = for_config(cfg, tokenizer)
    tasks = TaskMix.from_config(cfg.tasks)
    problems = fixed_problems(tasks, (steps + 1) * t.problems_per_step, cfg.seed)

    with tempfile.TemporaryDirectory(prefix="explorl-bench-trl-") as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "model"
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        del model
        ecfg = copy.deepcopy(cfg)
        ecfg.model.path = str(model_dir)
        ecfg.train.ppo_epochs, ecfg.train.minibatches, ecfg.train.steps = 1, 1, steps + 1
        note(f"bench trl: TRL GRPOTrainer and explorl, interleaved, {steps} + 1 warm-up steps each")
        import trl
        explorl_step = ExplorlSteps(ecfg, problems, tmp / "explorl")
        memory = PeakMemory(resolve_device(cfg.model.device))
        theirs = run_interleaved(model_dir, problems, tasks, cfg, steps, "group" if scale_by_std else "none",
                                 eps_low, eps_high, explorl_step, tmp / "trl",
                                 render=lambda p: prompt_format.render(p) + p.prefix, memory=memory)
        ours = explorl_step.result

    import torch
    import transformers
    print(f"explorl vs TRL {trl.__version__} GRPOTrainer (transformers {transformers.__version__}, "
          f"torch {torch.__version__}); {machine}")
    print(f"{steps} timed steps after 1 warm-up step, the two trainers alternating step by step; each step: "
          f"{t.problems_per_step} prompts x {t.rollouts_per_problem} completions, max {t.max_new_tokens} new tokens\n")
    print(table([_row("explorl", ours, steps) + list(memory.row("explorl")),
                 _row("TRL GRPOTrainer", theirs, steps) + list(memory.row("TRL GRPOTrainer"))],
                ["trainer", "warm-up s", "mean s/step", "median s/step", "gen s/step", "gen tokens/step",
                 "tokens/s (step)", "reward", "peak MiB", "rise MiB"]))
    print(memory.legend())
    print("gen tokens/step: generated completion tokens per step, up to and including the first EOS, counted "
          "on each side; tokens/s (step): those tokens over the mean wall time of a whole training step")
    same = ["model weights (same save_pretrained folder)",
            f"prompts and their order (prompt.template: {prompt_format.template}, given to TRL as text)",
            "reward (task verifier)", f"group size {t.rollouts_per_problem}",
            f"{t.problems_per_step} prompts/step", f"max_new_tokens {t.max_new_tokens}",
            "temperature 1, top_p 1, no top_k", f"lr {t.lr} (constant)", f"weight decay {t.weight_decay}",
            f"grad clip {t.max_grad_norm}", "AdamW (betas 0.9/0.999, eps 1e-8)",
            "1 optimisation pass per batch, 1 minibatch",
            f"clip eps {eps_low}/{eps_high}",
            f"token aggregation {t.loss_agg_mode} (TRL loss_type={LOSS_TYPES[t.loss_agg_mode]})",
            f"advantage {'(r - mean) / std' if scale_by_std else 'r - mean'} per group "
            f"(TRL scale_rewards={'group' if scale_by_std else 'none'})",
            f"weights in {cfg.model.dtype} on {resolve_device(cfg.model.device).type} (model.dtype, model.device)"]
    needs_ref = bool(plugins.needs() & {"ref_logp", "ref_model"})
    if not needs_ref:
        same.append("no KL / reference model (beta 0)")
    print("\nmatched: " + "; ".join(same))
    diff = [
        ["sampler", "shared-prompt KV cache (prefill once per prompt), drops finished rows",
         "model.generate on prompts repeated per completion"],
        ["training forward", "prompt encoded once per group, responses attend to its K/V",
         "full prompt+completion forward per completion"],
        ["pi_old log-probs", "recorded while sampling", "detached current log-probs (same value on-policy)"],
        ["advantage std epsilon", f"{getattr(estimator, 'epsilon', '-')}", "1e-4"],
        ["dual clip (neg. advantages)", f"c = {getattr(policy, 'clip_c', None)} (inactive in one on-policy pass)",
         "none"],
        ["recipe components", ", ".join(sorted(names)), "GRPO (fixed plug-ins)"],
        ["optimizer wrapper", "torch.optim.AdamW directly", "HF Trainer (accelerate) AdamW, constant scheduler"],
        ["step overhead", "none", "accelerate/Trainer loop, metrics (entropy, clip ratios), callbacks"],
        ["random streams", "explorl's torch.Generator per step", "global torch RNG (different samples)"],
        ["warm-up step", "includes first-call allocations", "includes Trainer/accelerate setup"],
    ]
    if needs_ref:
        diff.append(["reference model", "the recipe uses one (KL or reference log-probs)", "none (beta 0)"])
    if t.weight_decay:
        diff.append(["weight decay applies to", "every parameter", "all but biases and norm weights (HF Trainer)"])
    print("\ndiffers:")
    print(table(diff, ["setting", "explorl", "TRL"], align="lll"))
    t_ours = statistics.median(ours["times"][1:steps + 1])
    t_theirs = statistics.median(theirs["times"][1:steps + 1])
    print("\nspeedup = TRL median s/step / explorl median s/step (the median resists load from other processes)")
    print(f"speedup_vs_trl: {t_theirs / t_ours:.2f}")
    return 0
