"""``explorl bench throughput``: rollout tokens/s of the engine against ``model.generate``.

Both sample the same batch (``train.problems_per_step`` problems from the config's task mix,
``train.rollouts_per_problem`` rollouts each, ``train.max_new_tokens``, temperature 1,
top-p 1) from the same warm-started policy. ``model.generate`` gets what a user would hand
it: the left-padded prompts, each repeated once per rollout. Generated tokens are counted the
same way for both: up to and including the first EOS. Each side is run once to warm up, then
``REPEATS`` times, interleaved (so load from other processes hits both alike); the median
tokens/s is reported. Then one full training step (after one warm-up step) is split by stage.
The thread count is whatever ``torch`` is configured with; this bench does not change it.
"""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time

import torch

from explorl.bench import fixed_problems, machine_line, note, prompt_text, table
from explorl.bench.memory import PeakMemory
from explorl.train.logging import STAGES

REPEATS = 5


def generated_tokens(sequences: torch.Tensor, prompt_len: int, eos: int) -> int:
    """Tokens ``generate`` produced per row, up to and including the first EOS, summed."""
    gen = sequences[:, prompt_len:]
    if gen.shape[1] == 0:
        return 0
    is_eos = gen == eos
    first = is_eos.int().argmax(dim=1)
    lengths = torch.where(is_eos.any(dim=1), first + 1, torch.full_like(first, gen.shape[1]))
    return int(lengths.sum())


def make_generate(model, tokenizer, problems, counts, max_new: int, prompt_format=None):
    """A ``seed -> tokens`` callable running ``model.generate`` on the repeated, left-padded prompts
    (rendered by ``prompt_format`` as the engine renders them; raw text by default)."""
    tokenizer.padding_side = "left"
    render = prompt_format.render if prompt_format is not None else prompt_text

    def run(seed: int) -> int:
        enc = tokenizer([render(p) for p in problems], return_tensors="pt", padding=True, add_special_tokens=False)
        reps = torch.tensor(counts)
        ids = enc.input_ids.repeat_interleave(reps, dim=0).to(model.device)
        mask = enc.attention_mask.repeat_interleave(reps, dim=0).to(model.device)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                 top_k=0, max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        return generated_tokens(out, ids.shape[1], tokenizer.eos_token_id)

    return run


def make_engine(engine, problems, counts, max_new: int):
    temps = [1.0] * max_new

    def run(seed: int) -> int:
        return engine.rollout(problems, counts, temps, top_p=1.0, seed=seed).tokens

    return run


def measure(runners: dict, repeats: int = REPEATS, memory=None) -> dict:
    """Warm each runner up once, then time ``repeats`` interleaved rounds; medians per runner.
    ``memory`` (a ``PeakMemory``) records each runner's peak over its timed runs."""
    for fn in runners.values():
        fn(10_000)
    samples = {name: [] for name in runners}
    for i in range(repeats):
        for name, fn in runners.items():
            with memory.measure(name) if memory is not None else contextlib.nullcontext():
                start = time.perf_counter()
                tokens = fn(i)
                samples[name].append((tokens, time.perf_counter() - start))
    return {name: {"tok_s": statistics.median(t / s for t, s in rows),
                   "seconds": statistics.median(s for _, s in rows),
                   "tokens": statistics.median(t for t, _ in rows)} for name, rows in samples.items()}


def time_train_step(cfg) -> tuple[dict, dict]:
    """Metrics of a warm-up training step and of the step after it (Trainer on a temp folder)."""
    from explorl.train.loop import Trainer
    with tempfile.TemporaryDirectory(prefix="explorl-bench-") as tmp:
        trainer = Trainer(cfg, tmp, progress=False, log=lambda *a, **k: None)
        first = trainer.train_step()
        second = trainer.train_step()
    return first, second


def _quiet():
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run(args) -> int:
    from explorl.config import config_from_args
    from explorl.policy import load_policy
    from explorl.policy.engine import RolloutEngine
    from explorl.policy.prompts import for_config
    from explorl.tasks import TaskMix

    machine = machine_line()  # measured before this process starts working
    cfg = config_from_args(args)
    t = cfg.train
    _quiet()
    model, tokenizer = load_policy(cfg, log=note)
    model.eval()
    tasks = TaskMix.from_config(cfg.tasks)
    problems = fixed_problems(tasks, t.problems_per_step, cfg.seed)
    counts = [t.rollouts_per_problem] * len(problems)
    prompt_format = for_config(cfg, tokenizer)
    engine = RolloutEngine(model, tokenizer, cfg.model.backend, prompt_format, cfg.model.cuda_graphs)
    runners = {f"RolloutEngine ({type(engine.backend).__name__})": make_engine(engine, problems, counts,
                                                                               t.max_new_tokens)}
    if type(engine.backend).__name__ == "StaticDecoder":  # CUDA graphs: also the fast path without them
        runners["RolloutEngine (FastLM)"] = make_engine(
            RolloutEngine(model, tokenizer, cfg.model.backend, prompt_format, False), problems, counts, t.max_new_tokens)
    if type(engine.backend).__name__ != "HFBackend":
        runners["RolloutEngine (HFBackend)"] = make_engine(RolloutEngine(model, tokenizer, "hf", prompt_format),
                                                           problems, counts, t.max_new_tokens)
    runners["model.generate"] = make_generate(model, tokenizer, problems, counts, t.max_new_tokens, prompt_format)
    n_params = sum(p.numel() for p in model.parameters())
    note(f"bench throughput: {len(problems)} problems x {t.rollouts_per_problem} rollouts, "
         f"max_new_tokens {t.max_new_tokens}, {REPEATS} timed repeats each")
    memory = PeakMemory(model.device)
    results = measure(runners, memory=memory)
    gen = results["model.generate"]["tok_s"]
    main = next(iter(results))

    note("bench throughput: timing one training step (after a warm-up step)")
    warm, step = time_train_step(cfg)

    print(f"model: {model.config.model_type}, {n_params / 1e6:.2f}M parameters, vocab {model.config.vocab_size}; "
          f"{machine}")
    print(f"batch: {len(problems)} problems x {t.rollouts_per_problem} rollouts = {sum(counts)} sequences, "
          f"max_new_tokens {t.max_new_tokens}, temperature 1, top_p 1 (generate: top_k=0); "
          f"median of {REPEATS} runs after 1 warm-up\n")
    rows = [[name, f"{r['tokens']:.0f}", f"{r['seconds'] * 1e3:.1f}", f"{r['tok_s']:.0f}", f"{r['tok_s'] / gen:.2f}x",
             *memory.row(name)] for name, r in results.items()]
    print(table(rows, ["rollout", "tokens", "ms", "tokens/s", "vs generate", "peak MiB", "rise MiB"]))
    print(memory.legend())
    print()
    stage_rows = []
    for key in [f"time/{s}" for s in STAGES]:
        stage_rows.append([key, f"{warm.get(key, 0.0) * 1e3:.1f}", f"{step.get(key, 0.0) * 1e3:.1f}",
                           f"{100 * step.get(key, 0.0) / max(step['time/step'], 1e-12):.1f}%"])
    total = lambda m: sum(m.get(f"time/{s}", 0.0) for s in STAGES)  # noqa: E731
    stage_rows.append(["sum of the stages", f"{total(warm) * 1e3:.1f}", f"{total(step) * 1e3:.1f}",
                       f"{100 * total(step) / max(step['time/step'], 1e-12):.1f}%"])
    stage_rows.append(["time/step (wall clock)", f"{warm['time/step'] * 1e3:.1f}", f"{step['time/step'] * 1e3:.1f}",
                       "100%"])
    print(f"one training step ({cfg.recipe or 'default'} recipe, ppo_epochs {t.ppo_epochs}, "
          f"minibatches {t.minibatches}, {step['rollouts']} rollouts, {step['tokens/step']} tokens):")
    print(table(stage_rows, ["stage", "warm-up ms", "timed ms", "share"]))
    print(f"training throughput: {step['tokens/step'] / step['time/step']:.0f} generated tokens/s over the whole step")
    print(f"speedup_vs_generate: {results[main]['tok_s'] / gen:.2f}")
    return 0
