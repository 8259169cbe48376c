"""``explorl bench scale``: what more processes and a GPU buy.

**CPU, 1 vs 2 processes.** The same run (the config given, ``train.parallel: ddp``, the same
global batch) is launched as one process and as two under ``torchrun --standalone``, each
process with its share of the machine's cores as torch threads (2 cores: one process with 2
threads against two with 1); and once with ``train.parallel: none``, the single-process path,
for the cost of the rank-invariant one. Reported: the median ``time/step`` of rank 0 (the wall clock of
the whole step, waiting for the other rank included) over the steps after the first, and
generated tokens per second of it. The two runs make the same updates (``tests/test_parallel.py``),
so the comparison is of time only.

**GPU** (when CUDA is visible): rollout tokens/s of the engine against ``model.generate`` and,
where vLLM is installed, against the vLLM backend (``model.backend: vllm``; its time includes
the trainer's forward that gives π_old, as in training), on a random-init model with the shape
of Qwen2.5-0.5B (no download), in bfloat16. Without CUDA this part prints that it was skipped.
The step time of TRL's GRPOTrainer with vLLM is not compared (TRL's vLLM mode loads the
tokenizer through vLLM, which the benchmark's tokenizer, learned on the spot, does not have).

The last line is the 2-process speed-up (1-process ms/step over 2-process ms/step).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from explorl.bench import machine_line, note, table

STEPS = 8
#: Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocab 151936)
QWEN_05B = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "intermediate_size": 4864, "vocab_size": 151936, "max_position_embeddings": 32768,
            "tie_word_embeddings": True}


def run(args) -> int:
    from explorl.config import config_from_args
    machine = machine_line()
    cfg = config_from_args(args)
    steps = args.steps or STEPS
    cores = os.cpu_count() or 2
    rows, times = [], {}
    cfg.model.device = "cpu"  # this half compares processes on the CPU, also where a GPU is visible
    with tempfile.TemporaryDirectory(prefix="explorl-scale-") as tmp:
        for procs, mode in ((1, "none"), (1, "ddp"), (2, "ddp")):
            cfg.train.parallel = mode
            config = Path(tmp) / f"config-{mode}.yaml"
            config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            threads = max(1, cores // procs)
            note(f"bench scale: {steps} steps, parallel {mode}, {procs} process(es), {threads} thread(s) each")
            metrics = _train(config, Path(tmp) / f"{mode}{procs}", procs, steps, threads)
            timed = metrics[1:] or metrics
            ms = statistics.median(m["time/step"] for m in timed) * 1e3
            tok_s = statistics.median(m["tokens/step"] / m["time/step"] for m in timed)
            times[(procs, mode)] = ms
            rows.append([mode, str(procs), str(threads), f"{ms:.1f}", f"{tok_s:.0f}",
                         "—" if mode == "none" else f"{times[(1, 'ddp')] / ms:.2f}x"])
    t = cfg.train
    print(machine)
    print(f"CPU, data parallel (train.parallel: ddp, gloo): {t.problems_per_step} problems x "
          f"{t.rollouts_per_problem} rollouts per step in all, max_new_tokens {t.max_new_tokens}, ppo_epochs "
          f"{t.ppo_epochs}, minibatches {t.minibatches}; median of steps 2..{steps}, rank 0's wall clock")
    print(table(rows, ["train.parallel", "processes", "threads each", "ms/step", "tokens/s", "vs 1 process"]))
    print("parallel: none is the single-process path (torch.multinomial, one-pass update); ddp's rank-invariant "
          "sampling and two-pass update cost the difference on one process")
    print()
    for line in _gpu_part(cfg):
        print(line)
    print(f"speedup_2_vs_1_processes: {times[(1, 'ddp')] / times[(2, 'ddp')]:.2f}")
    return 0


def _train(config: Path, out: Path, procs: int, steps: int, threads: int) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if procs == 1:
        launch = [sys.executable, "-m", "explorl"]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        launch = [torchrun, "--standalone", "--nproc_per_node", str(procs), "-m", "explorl"]
    cmd = [*launch, "train", "--config", str(config), "--steps", str(steps), "--set", "train.checkpoint_every=1000000",
           "--set", f"train.steps={steps}", "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench scale: the {procs}-process run failed:\n{done.stderr[-2000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _gpu_part(cfg) -> list[str]:
    if not torch.cuda.is_available():
        return ["GPU: skipped (no CUDA device visible)"]
    device = torch.device("cuda")
    lines = rollout_comparison(cfg, device, QWEN_05B, torch.bfloat16)
    lines[0] = f"GPU: {torch.cuda.get_device_name(device)}; " + lines[0]
    return lines


def rollout_comparison(cfg, device: torch.device, shape: dict, dtype: torch.dtype) -> list[str]:
    """Engine vs ``model.generate`` tokens/s on a random-init Qwen2 of ``shape`` on ``device``
    (the tokenizer: byte-level BPE of 512 tokens learned from the task mix; the model's larger
    vocabulary only widens the softmax, as a real checkpoint's would)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from explorl.bench import fixed_problems
    from explorl.bench.throughput import make_engine, make_generate, measure
    from explorl.policy.engine import RolloutEngine
    from explorl.policy.factory import task_texts, train_bpe_tokenizer
    from explorl.tasks import TaskMix
    tokenizer = train_bpe_tokenizer(task_texts(200), 512)
    tokenizer.pad_token = tokenizer.eos_token
    special = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(Qwen2Config(**shape, **special), dtype=dtype)
    model.to(device).eval()
    t = cfg.train
    problems = fixed_problems(TaskMix.from_config(cfg.tasks), t.problems_per_step, cfg.seed)
    counts = [t.rollouts_per_problem] * len(problems)
    engine = RolloutEngine(model, tokenizer, cuda_graphs=cfg.model.cuda_graphs)
    runners = {f"RolloutEngine ({type(engine.backend).__name__})": make_engine(engine, problems, counts,
                                                                               t.max_new_tokens)}
    if type(engine.backend).__name__ == "StaticDecoder":  # CUDA graphs: also the fast path without them
        runners["RolloutEngine (FastLM)"] = make_engine(RolloutEngine(model, tokenizer, cuda_graphs=False), problems,
                                                        counts, t.max_new_tokens)
    runners["model.generate"] = make_generate(model, tokenizer, problems, counts, t.max_new_tokens)
    vllm = None
    if importlib.util.find_spec("vllm") is not None:
        from explorl.config import VLLMOptions
        from explorl.policy.vllm_engine import VLLMEngine
        vllm = VLLMEngine(model, tokenizer, options=VLLMOptions(gpu_memory_utilization=0.4))
        runners["vLLM (+ trainer forward for π_old)"] = make_engine(vllm, problems, counts, t.max_new_tokens)
    try:
        results = measure(runners)
    finally:
        if vllm is not None:
            vllm.close()
    gen = results["model.generate"]["tok_s"]
    rows = [[name, f"{r['tokens']:.0f}", f"{r['seconds'] * 1e3:.1f}", f"{r['tok_s']:.0f}", f"{r['tok_s'] / gen:.2f}x"]
            for name, r in results.items()]
    params = sum(p.numel() for p in model.parameters())
    missing = [] if vllm is not None else ["vLLM: not installed here (pip install -e .[vllm]), not compared"]
    return [f"random-init Qwen2 ({params / 1e6:.0f}M parameters), {str(dtype).replace('torch.', '')}, "
            f"{sum(counts)} sequences, max_new_tokens {t.max_new_tokens}",
            table(rows, ["rollout", "tokens", "ms", "tokens/s", "vs generate"])] + missing
