"""Verifiers under guard: errors, time-outs and invalid rewards are counted per source, a hung
verifier is abandoned, the error budget stops a run with a message that shows the fault, and a
source that fails its checks is refused before anything is written."""
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from explorl.tasks import SOURCES, Addition, TaskMix
from explorl.tasks.guard import FaultLedger, GuardedVerifier, VerificationFailed
from explorl.train.loop import Trainer
from run_records import run_metrics

ROOT = Path(__file__).resolve().parent.parent


class Flaky(Addition):
    """Addition whose verifier raises on completions containing '7', hangs on 'hang', returns
    out-of-range or NaN rewards on 'big' / 'nan', and kills its process on 'die'."""

    name = "flaky"

    def score(self, problem, completion):
        if "hang" in completion:
            sum(range(10**13))  # a loop in C: only killing the process stops it
        if "die" in completion:
            os._exit(3)
        if "big" in completion:
            return 1.5
        if "nan" in completion:
            return math.nan
        if "7" in completion:
            raise KeyError("seven")
        return super().score(problem, completion)


class OddBroken(Addition):
    """Raises on completions of odd length: a verifier bug that hits some rollouts of every step."""

    name = "odd_broken"

    def score(self, problem, completion):
        if len(completion) % 2:
            raise IndexError("odd")
        return super().score(problem, completion)


class BrokenOnEmpty(Addition):
    name = "broken_on_empty"

    def score(self, problem, completion):
        return 1.0 if int(completion) == int(problem.answer) else 0.0  # raises on garbage


def _problems(n):
    src = Flaky(digits=(1, 1))
    return [src.problem(i) for i in range(n)]


def test_faults_are_classified_and_a_hang_is_abandoned():
    tasks = TaskMix({"flaky": Flaky(digits=(1, 1))})
    verifier = GuardedVerifier(tasks, timeout=1.0)
    try:
        probs = _problems(7)
        texts = [probs[0].answer, "x7", "big", "nan", "hang", "die", probs[6].answer]
        rewards, faults = verifier.score(probs, texts)
    finally:
        verifier.close()
    assert rewards == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    kinds = {f.completion: f.kind for f in faults}
    assert kinds == {"x7": "error", "big": "invalid", "nan": "invalid", "hang": "timeout", "die": "error"}
    assert "KeyError" in next(f.detail for f in faults if f.completion == "x7")
    assert "exit code 3" in next(f.detail for f in faults if f.completion == "die")
    assert verifier.restarts == 2  # one for the hang, one for the crash


def test_a_hung_verification_is_abandoned_when_its_time_is_up():
    """Timed on a worker that is already up, so starting a process on a loaded machine is not
    counted: only the hang itself, which must end within the time limit plus a grace for the kill."""
    timeout, grace = 1.0, 3.0
    verifier = GuardedVerifier(TaskMix({"flaky": Flaky(digits=(1, 1))}), timeout=timeout)
    problem = _problems(1)[0]
    out = {}

    def score_the_hang():
        start = time.monotonic()
        out["result"] = verifier.score([problem], ["hang"])
        out["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=score_the_hang, daemon=True)
    try:
        assert verifier.score([problem], [problem.answer]) == ([1.0], [])  # the worker is up
        thread.start()
        thread.join(timeout + grace)
        assert not thread.is_alive(), f"the hung verification was not abandoned within {timeout + grace:g} s"
    finally:
        if thread.is_alive():
            verifier._proc.kill()  # ends the hang, so the scoring thread returns
            thread.join(10)
        verifier.close()
    rewards, faults = out["result"]
    assert rewards == [0.0] and [f.kind for f in faults] == ["timeout"]
    assert timeout <= out["elapsed"] < timeout + grace, out["elapsed"]
    assert verifier.restarts == 1


def test_in_process_mode_times_out_python_code_with_an_alarm():
    class Slow(Addition):
        name = "slow"

        def score(self, problem, completion):
            while completion == "loop":
                pass
            return 0.0

    verifier = GuardedVerifier(TaskMix({"slow": Slow()}), timeout=0.3, isolate=False)
    p = Slow().problem(0)
    rewards, faults = verifier.score([p, p], ["loop", "1"])
    assert rewards == [0.0, 0.0] and [f.kind for f in faults] == ["timeout"]


def test_ledger_counts_per_source_and_the_budget_names_the_source():
    logged = []
    ledger = FaultLedger(["flaky", "addition"], max_share=0.2, log_first=1, log=logged.append)
    faults = GuardedVerifier(TaskMix({"flaky": Flaky()}), isolate=False).score(_problems(3), ["1", "7", "77"])[1]
    ledger.add(10, faults)
    assert ledger.metrics()["verify/errors/flaky"] == 2 and ledger.metrics()["verify/errors/addition"] == 0
    assert len(logged) == 1 and "'7'" in logged[0]  # only the first is logged in full
    ledger.check()  # 2 of 10 is not over 20%
    ledger.add(2, faults[:1])
    with pytest.raises(VerificationFailed, match=r"3 of 12 verifications .* source 'flaky' .*completion '7'"):
        ledger.check()


@pytest.fixture
def extra_sources(monkeypatch):
    monkeypatch.setitem(SOURCES, "flaky", Flaky)
    monkeypatch.setitem(SOURCES, "broken_on_empty", BrokenOnEmpty)
    monkeypatch.setitem(SOURCES, "odd_broken", OddBroken)


def test_a_run_stops_when_a_verifier_keeps_failing(tmp_path, tiny_config, extra_sources):
    cfg = tiny_config(tasks={"odd_broken": {"digits": [1, 1]}}, verify={"check_at_start": False})
    with pytest.raises(VerificationFailed, match=r"over verify.max_error_share=0.1.*source 'odd_broken'.*first: error"):
        Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()


def test_faults_under_the_budget_are_counted_in_metrics(tmp_path, tiny_config, extra_sources):
    cfg = tiny_config(tasks={"odd_broken": {"digits": [1, 1]}, "addition": {"digits": [1, 1]}},
                      verify={"max_error_share": 1.0, "check_at_start": False}, train={"steps": 2})
    logged = []
    Trainer(cfg, tmp_path / "run", progress=False, log=logged.append).run()
    rows = run_metrics(tmp_path / "run")
    assert all(r["verify/errors/addition"] == 0 for r in rows)
    assert sum(r["verify/errors/odd_broken"] for r in rows) > 0
    assert any(line.startswith("verify: error in source 'odd_broken'") and "IndexError" in line for line in logged)


def test_a_source_that_fails_its_checks_is_refused_before_the_run_folder_exists(tmp_path, tiny_config,
                                                                                 extra_sources):
    cfg = tiny_config(tasks={"broken_on_empty": {"digits": [1, 1]}})
    with pytest.raises(ValueError, match=r"task source 'broken_on_empty' fails its checks: .*verify raised ValueError"):
        Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_a_training_run_abandons_hung_verifications_and_finishes(tmp_path):
    """A source whose verifier hangs in C code on some completions: the run counts the time-outs
    in its metrics and finishes. Run as a command with a time limit, because a verifier run in
    the trainer's own process could not be interrupted there: without the guard's worker the run
    would never end, and the limit turns that into a failure."""
    out = tmp_path / "run"
    tasks = '{hangs: {kind: "user_sources:HangsSometimes", digits: [1, 1]}, addition: {digits: [1, 1]}}'
    command = [sys.executable, "-m", "explorl", "train", "--config", str(ROOT / "configs" / "tiny.yaml"),
               "--steps", "2", "--out", str(out), "--quiet", "--set", f"tasks={tasks}",
               "--set", "verify.timeout=0.5", "--set", "verify.max_error_share=1.0",
               "--set", "verify.check_at_start=false", "--set", "eval.problems_per_source=1",
               "--set", "model.warmup.tasks={addition: {digits: [1, 1]}, reversal: {length: [2, 3]}}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = run_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert sum(r["verify/timeouts/hangs"] for r in rows) > 0
    assert all(r["verify/timeouts/addition"] == 0 for r in rows)
    assert "end" in json.loads((out / "eval.json").read_text())
