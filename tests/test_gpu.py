"""On a CUDA device: the policy, its sampling and a training run stay on the GPU, in bfloat16,
and match the CPU where they should. Skipped, with the reason, where no CUDA device is visible."""
from __future__ import annotations


import pytest
import torch
from run_records import run_metrics

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")]


def test_sampling_stays_on_the_device(tiny_model, monkeypatch):
    import explorl.policy.engine as engine_module
    from explorl.policy.engine import RolloutEngine
    from explorl.tasks import TaskMix
    import random
    model, tokenizer = tiny_model
    model.to("cuda")
    seen = []
    real = engine_module.sample_next_token

    def spy(logits, *args, **kwargs):
        seen.append(logits.device.type)
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(engine_module, "sample_next_token", spy)
    mix = TaskMix.from_config({"addition": {"digits": [1, 2]}})
    problems = [mix.sample(random.Random(i)) for i in range(4)]
    batch = RolloutEngine(model, tokenizer).rollout(problems, [3] * 4, [1.0] * 6, seed=0)
    assert seen and set(seen) == {"cuda"}
    assert batch.response_ids.device.type == "cpu" and batch.size == 12


def test_the_same_noise_samples_the_same_tokens_on_cpu_and_gpu(tiny_model):
    from explorl.policy.engine import RolloutEngine
    from explorl.tasks import TaskMix
    import copy
    import random
    model, tokenizer = tiny_model
    mix = TaskMix.from_config({"reversal": {"length": [2, 4]}})
    problems = [mix.sample(random.Random(i)) for i in range(4)]
    noise = torch.rand(8, 6, generator=torch.Generator().manual_seed(0))
    cpu = RolloutEngine(model, tokenizer).rollout(problems, [2] * 4, [1.0] * 6, noise=noise)
    gpu = RolloutEngine(copy.deepcopy(model).to("cuda"), tokenizer).rollout(problems, [2] * 4, [1.0] * 6, noise=noise)
    same = sum(a == b for a, b in zip(cpu.texts, gpu.texts))
    assert same >= 7  # float differences between devices may flip a draw at a boundary, rarely
    torch.testing.assert_close(cpu.old_logp[:1], gpu.old_logp[:1], rtol=1e-3, atol=1e-3)


def test_cuda_graphs_sample_what_the_fast_path_samples(tiny_model):
    """model.cuda_graphs: the captured decoding steps sample what FastLM samples on the same GPU
    under the same noise, through row drops and padded buckets; weights updated in place (as by
    an optimizer step) are read by the graphs as they are, and moved weights are captured again."""
    import copy
    import random
    from explorl.policy.engine import RolloutEngine
    from explorl.policy.static_decode import StaticDecoder
    from explorl.tasks import TaskMix
    model, tokenizer = tiny_model
    gpu = copy.deepcopy(model).to("cuda")
    graphs, today = RolloutEngine(gpu, tokenizer, cuda_graphs=True), RolloutEngine(gpu, tokenizer, cuda_graphs=False)
    assert isinstance(graphs.backend, StaticDecoder) and isinstance(RolloutEngine(gpu, tokenizer).backend, StaticDecoder)
    graphs.stop_ids = today.stop_ids = torch.arange(0, len(tokenizer), 3)  # rows end at different steps
    mix = TaskMix.from_config({"reversal": {"length": [2, 4]}})
    problems = [mix.sample(random.Random(i)) for i in range(4)]
    noise = torch.rand(7, 10, generator=torch.Generator().manual_seed(0))

    def assert_same():
        a = today.rollout(problems, [3, 1, 2, 1], [1.0] * 10, noise=noise)
        b = graphs.rollout(problems, [3, 1, 2, 1], [1.0] * 10, noise=noise)
        assert torch.equal(a.response_ids, b.response_ids)
        torch.testing.assert_close(a.behaviour_logp, b.behaviour_logp, rtol=1e-4, atol=1e-4)
        assert a.mask.sum(1).min() < a.mask.sum(1).max()

    assert_same()
    captured = graphs.backend.captures
    assert captured >= 2  # the first bucket and at least one smaller one after rows were dropped
    with torch.no_grad():
        for param in gpu.parameters():
            param.mul_(1.25)
    assert_same()
    assert graphs.backend.captures == captured  # replayed with the new weights, not captured again
    weight = gpu.model.layers[0].self_attn.q_proj.weight
    weight.data = weight.data.clone()  # the weight moves to another address
    assert_same()
    assert graphs.backend.captures > captured


def test_a_bfloat16_run_trains_on_the_gpu(tmp_path, tiny_config):
    from explorl.train.loop import Trainer
    # a warm start long enough that some groups have both right and wrong answers (a gradient)
    cfg = tiny_config(model={"device": "cuda", "dtype": "bfloat16", "warmup": {"steps": 300, "batch_size": 32}},
                      tasks={"addition": {"digits": [1, 1]}},
                      train={"steps": 3, "problems_per_step": 8, "rollouts_per_problem": 8})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    assert next(trainer.model.parameters()).device.type == "cuda"
    start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 3 and all(r["perf/peak_cuda_mb"] > 0 for r in rows)
    assert all(torch.isfinite(torch.tensor(r["loss/total"])) for r in rows)
    assert any(r["loss/grad_norm"] > 0 for r in rows), "no step had a gradient: the test checks nothing"
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in start.items())


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_data_parallel_run_on_the_gpu(tmp_path, parallel):
    """torchrun with one process per GPU (as many as are visible, at most 2): finite losses and a
    checkpoint written by rank 0. NCCL carries the collectives of 2 processes, and FSDP's even
    for one (its private process group)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    procs = min(2, torch.cuda.device_count())
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = dict(os.environ, PYTHONPATH=str(root))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out = tmp_path / "run"
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", str(procs), "-m", "explorl", "train",
                           "--config", str(root / "configs" / "tiny.yaml"), "--steps", "3", "--quiet",
                           "--set", "model.device=cuda", "--set", f"train.parallel={parallel}",
                           "--set", "train.checkpoint_every=3", "--out", str(out)],
                          env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = run_metrics(out)
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["loss/total"])) for r in rows)
    assert all(r["perf/peak_cuda_mb"] > 0 for r in rows)
    assert list((out / "ckpt").glob("step_*"))


# ---- vLLM (model.backend: vllm), where it is installed ------------------------------------------
needs_vllm = pytest.mark.skipif(__import__("importlib.util").util.find_spec("vllm") is None,
                                reason="vLLM is not installed (pip install -e .[vllm])")


def _vllm_sized_model():
    """A testbed model whose head size vLLM's attention kernels take (64; the CPU tests' is 16)."""
    from explorl.policy.model import build_tiny
    from explorl.tasks import ALPHABET
    model, tokenizer = build_tiny("qwen2", ALPHABET, 128, 2, 2, 1, 256, 128, seed=0)
    return model.to("cuda", torch.bfloat16), tokenizer


@needs_vllm
def test_vllm_log_probs_match_the_trainers_on_the_same_tokens():
    import random

    from explorl.config import VLLMOptions
    from explorl.policy.vllm_engine import VLLMEngine
    from explorl.tasks import TaskMix
    model, tokenizer = _vllm_sized_model()
    mix = TaskMix.from_config({"addition": {"digits": [1, 3]}, "reversal": {"length": [2, 5]}})
    problems = [mix.sample(random.Random(i)) for i in range(8)]
    engine = VLLMEngine(model, tokenizer, options=VLLMOptions(gpu_memory_utilization=0.2))
    try:
        batch = engine.rollout(problems, [4] * 8, [1.0] * 10, seed=0)
    finally:
        engine.close()
    assert batch.size == 32 and batch.counts == [4] * 8
    stop = set(engine.stop_ids.tolist())
    ended = [row[int(n) - 1] in stop for row, n in zip(batch.response_ids.tolist(), batch.lengths.tolist())]
    assert any(ended)  # a stopped response keeps its stop token
    # at temperature 1: vLLM's log-prob of each sampled token against the trainer's forward (bfloat16 both)
    diff = (batch.behaviour_logp - batch.old_logp).abs()[batch.mask > 0]
    assert float(diff.mean()) < 0.02 and float(diff.max()) < 0.5, (float(diff.mean()), float(diff.max()))


@needs_vllm
@pytest.mark.parametrize("sleep", [False, True])
def test_a_vllm_run_learns(tmp_path, tiny_config, sleep):
    import json
    from explorl.train.loop import Trainer
    cfg = tiny_config(model={"backend": "vllm", "device": "cuda", "dtype": "bfloat16",
                             "tiny": {"hidden_size": 128, "layers": 2, "heads": 2, "kv_heads": 1,
                                      "intermediate_size": 256},
                             "warmup": {"steps": 300, "batch_size": 32},
                             "vllm": {"gpu_memory_utilization": 0.2, "enable_sleep_mode": sleep}},
                     tasks={"addition": {"digits": [1, 2]}},
                     train={"steps": 40, "problems_per_step": 16, "rollouts_per_problem": 8, "lr": 3e-4,
                            "max_new_tokens": 6, "checkpoint_every": 40},
                     eval={"problems_per_source": 32, "samples": 8, "ks": [1, 8]})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 40 and all(torch.isfinite(torch.tensor(r["loss/total"])) for r in rows)
    evals = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert evals["end"]["pass@1"]["all"] > evals["start"]["pass@1"]["all"]


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_soft_tokens_on_the_gpu(tiny_model, backend):
    """CoT2 with K = 1 is ordinary decoding bit for bit on the device too, and the training forward
    recomputes the log-probs that soft-token rollouts recorded (MTS, Dirichlet, SwiReasoning)."""
    import copy
    from explorl.explore.decoding.cot2 import CoT2Steps
    from explorl.explore.decoding.swireasoning import SwiReasoning
    from explorl.policy.engine import RolloutEngine
    from explorl.policy.soft import response_logp_entropy
    from explorl.tasks import Problem
    model, tokenizer = tiny_model
    engine = RolloutEngine(copy.deepcopy(model).to("cuda"), tokenizer, backend)
    problems = [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(["12+3=", "9=", "rev:ab="])]
    plain = engine.rollout(problems, [3, 2, 2], [1.0] * 8, seed=4)
    one = engine.rollout(problems, [3, 2, 2], [1.0] * 8, seed=4, thinking=CoT2Steps(3, "mts", 1, True, 1.0, 1e-3))
    assert torch.equal(plain.response_ids, one.response_ids) and torch.equal(plain.old_logp, one.old_logp)
    for rule in (CoT2Steps(3, "mts", 3, True, 1.0, 1e-3), CoT2Steps(3, "dirichlet", 1, True, 1.0, 1e-3),
                 SwiReasoning(window_size=1, max_switch_count=1).thinking(0)):
        batch = engine.rollout(problems, [3, 2, 2], [1.0] * 8, seed=4, thinking=rule)
        logp, _ = response_logp_entropy(engine.response_logits(batch), batch, None, False)
        torch.testing.assert_close(logp.cpu() * batch.grad_mask, batch.old_logp * batch.grad_mask, rtol=1e-4, atol=1e-4)
