"""Data parallelism (``train.parallel: ddp`` and ``fsdp``): a run of 2 processes under
``torchrun`` (gloo, CPU) writes the same metrics, evaluations and weights as a run of 1
process, for a fixed rollout count (GRPO) and a variable one (Knapsack), and resumes; plus the
parts it is made of."""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from explorl.policy.device import resolve_device
from explorl.policy.sampling import sample_next_token
from explorl.train.parallel import DataParallel
from run_records import run_metrics

ROOT = Path(__file__).resolve().parent.parent
# a warm start long enough that some rollouts are correct: the updates are not all zero
SETTINGS = ["--config", str(ROOT / "configs" / "tiny.yaml"),
            "--set", "model.warmup.steps=300", "--set", "model.warmup.batch_size=32",
            "--set", "model.device=cpu",  # gloo on the CPU, also where a GPU is visible
            "--set", "eval.share_start=false",  # every run evaluates its start (sharded under 2 processes)
            "--quiet"]


def _env():
    # tests/ on the path: configs name task sources of tests/user_sources.py by import path
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _train(out: Path, processes: int, *extra: str, torchrun_one: bool = False,
           ok: bool = True) -> subprocess.CompletedProcess:
    """``explorl train`` in ``processes`` processes; it must succeed unless ``ok`` is false."""
    if processes == 1 and not torchrun_one:
        cmd = [sys.executable, "-m", "explorl"]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(processes), "-m", "explorl"]
    done = subprocess.run([*cmd, "train", *SETTINGS, "--out", str(out), *extra], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    if ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file
    last = sorted(glob.glob(str(out / "ckpt" / "step_*" / "model" / "*.safetensors")))[-1]
    return load_file(last)


def assert_same_run(a: Path, b: Path) -> None:
    ma, mb = run_metrics(a), run_metrics(b)
    assert [m["step"] for m in ma] == [m["step"] for m in mb]
    for x, y in zip(ma, mb):
        keys = {k for k in set(x) | set(y) if not k.startswith(("time/", "perf/"))}
        for k in sorted(keys):
            vx, vy = x[k], y[k]
            if isinstance(vx, float) and isinstance(vy, float) and not (math.isnan(vx) and math.isnan(vy)):
                assert vx == pytest.approx(vy, rel=1e-4, abs=1e-5), (x["step"], k, vx, vy)
            else:
                assert vx == vy, (x["step"], k, vx, vy)
    assert_close_values(json.loads((a / "eval.json").read_text()), json.loads((b / "eval.json").read_text()))
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def assert_close_values(x, y, where="eval.json"):
    if isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            assert_close_values(x[k], y[k], f"{where}/{k}")
    elif isinstance(x, list) and isinstance(y, list):
        assert len(x) == len(y), where  # per-problem records: float32 sums differ in the last bits
        for i, (a, b) in enumerate(zip(x, y)):
            assert_close_values(a, b, f"{where}[{i}]")
    elif isinstance(x, float):
        assert x == pytest.approx(y, rel=1e-5, abs=1e-6), where
    else:
        assert x == y, where


RECIPE_SETTINGS = {"submodular": ("--set", "advantage=[{name: submodular, set_function: facility_location, "
                                          "credit: shapley, permutations: 5, verifier_coef: 1.0, gain_coef: 0.5}]"),
                   # answers that repeat in some groups and not in others, so the refresh at step 2 finds a direction
                   "east": ("--set", "decoding.refresh_every=2", "--set", "decoding.temperature=0.5",
                            "--set", "train.rollouts_per_problem=8")}


@pytest.mark.parametrize("recipe,backend,parallel,micro", [
    ("grpo", "fast", "ddp", None), ("knapsack", "fast", "ddp", None), ("grpo", "hf", "ddp", None),
    ("knapsack", "fast", "fsdp", 3), ("luffy", "fast", "ddp", None), ("salsa", "fast", "ddp", None),
    ("submodular", "fast", "ddp", None), ("sft", "fast", "ddp", 3),
    ("east", "fast", "ddp", None), ("east", "hf", "ddp", None)])
def test_two_processes_make_the_run_of_one(tmp_path, recipe, backend, parallel, micro):
    """Fixed and variable rollout counts; the fast path and the generic Hugging Face forward;
    FSDP with micro-batches that leave the ranks with unequal numbers of parts; teacher rows; a
    soup reference built on every rank; SubPO's Shapley orders drawn from its seeded generator
    and facility location on the policy's hidden states; a supervised term aggregated apart (sft),
    with micro-batches; a steering vector computed on every rank (EAST, refreshed at step 2)."""
    one, two = tmp_path / "one", tmp_path / "two"
    settings = ("--recipe", recipe, "--steps", "4", "--set", f"model.backend={backend}",
                "--set", f"train.parallel={parallel}", *(("--set", f"train.micro_batch_size={micro}") if micro else ()),
                *RECIPE_SETTINGS.get(recipe, ()))
    _train(one, 1, *settings)
    _train(two, 2, *settings)
    assert_same_run(one, two)
    rows = run_metrics(one)
    assert any(m["loss/grad_norm"] > 0 for m in rows), "no step had a gradient: the comparison tests nothing"
    if recipe == "east":  # u was recomputed from the run's own groups, on every rank alike
        assert rows[1]["decode/refreshed"] == 1.0 and rows[1]["decode/u_step"] == 2
    if recipe == "knapsack":  # the budget really moved rollouts between problems
        assert any(len(set(m["rollouts/per_problem"])) > 1 for m in rows)
    assert not (two / "ckpt" / ".lock").exists()


def test_fsdp_under_torchrun_with_one_process_joins_torchruns_rendezvous(tmp_path):
    """torchrun --nproc_per_node 1 (one GPU): FSDP's process group is torchrun's, not a private
    one whose store torchrun's agent would be waited on for (a hang, before the fix)."""
    one, run = tmp_path / "one", tmp_path / "torchrun"
    settings = ("--steps", "2", "--set", "train.parallel=fsdp")
    _train(one, 1, *settings)
    _train(run, 1, *settings, torchrun_one=True)
    assert_same_run(one, run)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_two_process_run_resumes(tmp_path, parallel):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    mode = ("--set", f"train.parallel={parallel}")
    _train(whole, 1, "--steps", "5", *mode)
    _train(parts, 2, "--steps", "3", *mode)
    _train(parts, 2, "--steps", "5", "--resume", *mode)
    assert_same_run(whole, parts)


def _faulty_tasks(kind: str) -> tuple[str, ...]:
    """A source whose verifier fails on some completions (tests/user_sources.py) beside a sound
    one; the warm start is the one of the other tests (trained on the usual tasks)."""
    return ("--set", f'tasks={{faulty: {{kind: "user_sources:{kind}", digits: [1, 1]}}, addition: {{digits: [1, 1]}}}}',
            "--set", "model.warmup.tasks={addition: {digits: [1, 1]}, reversal: {length: [2, 3]}}",
            "--set", "verify.check_at_start=false", "--set", "train.parallel=ddp")


@pytest.mark.slow  # about a minute on a loaded 2-core machine
def test_two_processes_count_every_ranks_verifier_faults(tmp_path):
    """Each rank verifies its share of the rollouts and of the evaluation; the faults of every rank
    are counted, so a run of 2 processes logs the counts of a run of 1."""
    one, two = tmp_path / "one", tmp_path / "two"
    settings = ("--steps", "2", "--set", "verify.max_error_share=1.0", *_faulty_tasks("FailsSometimes"))
    _train(one, 1, *settings)
    _train(two, 2, *settings)
    counts = {run: [{k: v for k, v in m.items() if k.startswith("verify/")} for m in run_metrics(run)]
              for run in (one, two)}
    assert counts[one] == counts[two]
    assert all(m["verify/errors/addition"] == m["verify/invalid/addition"] == 0 for m in counts[one])
    assert sum(m["verify/errors/faulty"] for m in counts[one]) > 0 and sum(m["verify/invalid/faulty"]
                                                                           for m in counts[one]) > 0
    faults = {run: {k: v["verify_faults"] for k, v in json.loads((run / "eval.json").read_text()).items()}
              for run in (one, two)}
    assert faults[one] == faults[two] and faults[one]["start"] > 0
    assert_same_run(one, two)


@pytest.mark.slow  # about a minute on a loaded 2-core machine
def test_the_error_budget_stops_both_ranks_with_its_message(tmp_path):
    """Past verify.max_error_share in a training step, every rank stops with the message of the run
    of one process (and none waits in a collective for the other: the command has a time limit)."""
    settings = ("--steps", "2", *_faulty_tasks("FailsInTraining"))
    stops = []
    for processes in (1, 2):
        done = _train(tmp_path / str(processes), processes, *settings, ok=False)
        assert done.returncode != 0, done.stderr[-3000:]
        lines = [line for line in done.stderr.splitlines() if line.startswith("explorl train: stopped: ")]
        assert len(lines) == processes, done.stderr[-3000:]
        stops.append({line.split("; first: ")[0] for line in lines})  # which fault is first follows the ranks
    assert stops[0] == stops[1]
    (message,) = stops[0]
    assert "verifications in step 1 failed (over verify.max_error_share=0.1); most in source 'faulty'" in message


@pytest.mark.slow  # five runs: a few minutes on a 2-core machine
def test_an_fsdp_checkpoint_resumes_on_another_number_of_processes(tmp_path):
    """FSDP checkpoints hold the full weights and optimizer state: saved by 2 processes and resumed
    by 1, or the reverse, the run goes on as the unbroken one."""
    mode = ("--set", "train.parallel=fsdp")
    whole = tmp_path / "whole"
    _train(whole, 1, "--steps", "4", *mode)
    for before, after in ((2, 1), (1, 2)):
        parts = tmp_path / f"{before}_then_{after}"
        _train(parts, before, "--steps", "2", *mode)
        _train(parts, after, "--steps", "4", "--resume", *mode)
        assert_same_run(whole, parts)


def test_fsdp_shards_the_training_model_and_keeps_a_whole_rollout_copy(tiny_config, tmp_path):
    from torch.distributed.tensor import DTensor

    from explorl.train.loop import Trainer
    trainer = Trainer(tiny_config(train={"steps": 1, "parallel": "fsdp"}), tmp_path / "run", progress=False,
                      log=lambda *_: None)
    try:
        assert all(isinstance(p, DTensor) for p in trainer.sharded.model.parameters())
        assert not any(isinstance(p, DTensor) for p in trainer.model.parameters())
        assert trainer.train_engine.model is trainer.sharded.model and trainer.engine.model is trainer.model
        trainer.run()
        for name, value in trainer.sharded.full_weights().items():  # the copy holds the trained weights
            torch.testing.assert_close(trainer.model.state_dict()[name], value)
    finally:
        trainer.close()


def test_fsdp_refuses_lora(tiny_config):
    from explorl.config import validate
    with pytest.raises(ValueError, match="fsdp with model.lora"):
        validate(tiny_config(train={"parallel": "fsdp"}, model={"lora": {"r": 4}}))


def test_torchrun_without_parallel_is_an_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="train.parallel=ddp"):
        DataParallel("none", torch.device("cpu"))


def test_device_settings():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="model.device"):
            resolve_device("cuda")


def test_a_local_rank_without_its_own_gpu_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="local rank 1 and only 1 CUDA device"):
        resolve_device("cuda")


def test_shards_are_whole_groups_balanced_by_rollouts():
    counts = [10, 2, 2, 2, 2, 6, 4, 4]
    shares = []
    for rank in range(2):
        dp = DataParallel("ddp", torch.device("cpu"))
        dp.world, dp.rank = 2, rank
        shares.append(dp.shard(counts))
    assert sorted(shares[0] + shares[1]) == list(range(len(counts)))
    loads = [sum(counts[g] for g in share) for share in shares]
    assert loads == [16, 16]


def test_a_rows_draw_depends_on_its_own_noise_only():
    torch.manual_seed(0)
    logits = torch.randn(6, 11)
    noise = torch.rand(6)
    alone = torch.stack([sample_next_token(logits[i:i + 1], 0.8, 0.9, None, noise[i:i + 1])[0][0] for i in range(6)])
    together = sample_next_token(logits, 0.8, 0.9, None, noise)[0]
    assert torch.equal(alone, together)


def test_inverse_cdf_sampling_follows_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -9.0]]).expand(40000, 5)
    tokens, logp_b, _, _ = sample_next_token(logits, 1.0, 0.95, None, torch.rand(40000,
                                             generator=torch.Generator().manual_seed(1)))
    # the nucleus at 0.95 keeps the first three tokens; frequencies follow their renormalised probabilities
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.0]), -1)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert freq[3:].sum() == 0
    assert torch.allclose(freq[:3], expected, atol=0.01)
    assert torch.allclose(logp_b.exp(), expected[tokens], atol=1e-5)


def test_rollout_rows_do_not_depend_on_the_other_rows(tiny_model):
    from explorl.policy.engine import RolloutEngine
    from explorl.tasks import TaskMix
    model, tokenizer = tiny_model
    engine = RolloutEngine(model, tokenizer)
    import random
    mix = TaskMix.from_config({"addition": {"digits": [1, 2]}, "reversal": {"length": [2, 5]}})
    rng = random.Random(0)
    problems = [mix.sample(rng) for _ in range(4)]
    counts = [3, 1, 4, 2]
    noise = torch.rand(10, 6, generator=torch.Generator().manual_seed(3))
    full = engine.rollout(problems, counts, [1.0] * 6, noise=noise)
    part = engine.rollout(problems[2:], counts[2:], [1.0] * 6, noise=noise[4:])
    assert full.texts[4:] == part.texts
    L = part.response_ids.shape[1]
    assert torch.equal(full.response_ids[4:, :L], part.response_ids)
    torch.testing.assert_close(full.old_logp[4:, :L], part.old_logp, rtol=1e-5, atol=1e-5)


def test_rollouts_in_parts_are_the_rollouts_at_once(tiny_model):
    """``max_rows`` (``train.rollout_batch_size``) bounds the rows decoded together; with
    per-row noise the parts give exactly the rows of one call."""
    import random

    from explorl.policy.engine import RolloutEngine
    from explorl.tasks import TaskMix
    model, tokenizer = tiny_model
    engine = RolloutEngine(model, tokenizer)
    mix = TaskMix.from_config({"addition": {"digits": [1, 2]}, "reversal": {"length": [2, 5]}})
    rng = random.Random(1)
    problems = [mix.sample(rng) for _ in range(5)]
    counts = [3, 1, 4, 2, 5]
    noise = torch.rand(15, 6, generator=torch.Generator().manual_seed(4))
    whole = engine.rollout(problems, counts, [1.0] * 6, noise=noise)
    parts = engine.rollout(problems, counts, [1.0] * 6, noise=noise, max_rows=4)
    assert parts.texts == whole.texts and parts.counts == counts
    assert torch.equal(parts.group, whole.group)
    L = min(parts.response_ids.shape[1], whole.response_ids.shape[1])
    assert torch.equal(parts.response_ids[:, :L], whole.response_ids[:, :L])
    seeded = engine.rollout(problems, counts, [1.0] * 6, seed=3, max_rows=4)
    assert seeded.size == 15 and seeded.counts == counts


def test_rows_continuing_a_prefix_are_verified_with_it(tiny_config, tmp_path):
    """Under ddp the verifier sees ``prefix + completion`` (Go-Explore's and REX-RAG's rows) and
    the verify time is its own stage, as in one process."""
    import dataclasses
    import random

    from explorl.train.loop import Trainer
    trainer = Trainer(tiny_config(train={"parallel": "ddp"}), tmp_path / "run", progress=False, log=lambda *_: None)
    try:
        problem = dataclasses.replace(trainer.tasks.sample(random.Random(0), "addition"), prefix="12")
        seen, real = [], trainer.verifier.score

        def recording(problems, completions):
            seen.extend(completions)
            return real(problems, completions)

        trainer.verifier.score = recording
        metrics = {}
        batch = trainer._sample([problem], [4], 1, metrics)
        assert seen == ["12" + text for text in batch.texts]
        assert metrics["time/verify"] > 0
    finally:
        trainer.close()
