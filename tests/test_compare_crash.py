"""``explorl compare`` killed at any point, with real processes on the tiny config: the parent
killed (SIGKILL) takes its child with it and the rerun resumes with one writer; Ctrl-C (SIGINT)
stops the child; a child killed outright is resumed and its time still counted; a second
compare on the same folder is refused; damaged result files are reported and set aside,
never read as missing."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from explorl.compare import study as compare_module
from explorl.compare.files import CorruptFile
from explorl.compare.results import collect, read_metrics
from explorl.compare.study import run_state
from explorl.cli import main
from explorl.folder_lock import FolderLocked

ROOT = Path(__file__).resolve().parent.parent
LONG = 2500  # generated tokens: a run long enough (~30 tiny steps) to be caught mid-training, also on a busy machine
SHORT = 300


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One EXPLORL_HOME for the module: the tiny warm start is made once and shared."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def compare(tmp_path, home, tiny_overrides, monkeypatch, capsys):
    """(argv for a study of grpo x 1 seed, an in-process runner returning (code, stdout, stderr),
    a launcher of the same command as a separate process, the study folder)."""
    monkeypatch.setenv("EXPLORL_HOME", str(home))
    sets = [o for o in tiny_overrides if not o.startswith(("recipe=", "seed=", "train.steps="))]
    out = tmp_path / "study"

    def argv(tokens):
        args = ["compare", "--recipes", "grpo", "--seeds", "1", "--tokens", str(tokens), "--out", str(out)]
        for item in sets:
            args += ["--set", item]
        return args

    def run(tokens=SHORT):
        code = main(argv(tokens))
        printed = capsys.readouterr()
        return code, printed.out, printed.err

    def spawn(tokens=LONG, ignore_sigint=False):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        # a shell's background job (cmd &) starts with SIGINT ignored
        setup = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
        with (tmp_path / "parent.log").open("w") as log:
            return subprocess.Popen([sys.executable, "-m", "explorl.cli", *argv(tokens)], stdout=log,
                                    stderr=subprocess.STDOUT, env=env, cwd=ROOT, preexec_fn=setup)

    return run, spawn, out


def _wait_for(condition, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the compare process exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    pytest.fail(f"no {what} after {timeout} s")


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper counts as gone)."""
    if Path("/proc/self/stat").exists():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat[stat.rindex(")") + 2] in "ZX"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _segments(run_dir: Path) -> dict[int, dict]:
    """Heartbeat records by pid."""
    return {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in (run_dir / "segments").glob("*.json")}


def _training(run_dir: Path) -> bool:
    """A child is training: it has written a checkpoint and its heartbeat."""
    return any((run_dir / "ckpt").glob("step_*")) and bool(_segments(run_dir))


def _kill(proc):
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


@pytest.mark.slow  # 25-40 s on a busy two-core machine (a separate compare process, its warm start, two runs)
def test_parent_killed_takes_its_child_and_the_rerun_resumes_with_one_writer(compare):
    run, spawn, out = compare
    run_dir = out / "runs" / "grpo" / "seed0"
    parent = spawn()
    try:
        lock = out / ".lock"
        _wait_for(lambda: lock.exists() and lock.read_text() == str(parent.pid), 60, "study lock", parent)
        # a second compare on the same folder stops at once, naming the one at work
        code, _, err = run(tokens=LONG)
        assert code == 2 and "comparison" in err and f"pid {parent.pid}" in err, err
        _wait_for(lambda: _training(run_dir), 180, "training child", parent)
        (child,) = _segments(run_dir)
        assert (run_dir / ".lock").read_text() == str(child)  # the trainer holds its run folder
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        _wait_for(lambda: _gone(child), 5, "exit of the child after its parent was killed")
    finally:
        _kill(parent)
    killed = _segments(run_dir)[child]
    assert killed["status"] == "running" and killed["wall_s"] > 0  # its last heartbeat

    code, printed, err = run(tokens=LONG)
    assert code == 0, printed + err
    assert "grpo seed 0: resume ..." in printed
    steps = _steps(run_dir)
    assert steps == list(range(1, len(steps) + 1))  # one writer: every step once, in order
    info = json.loads((run_dir / "run_info.json").read_text())
    segments = _segments(run_dir)
    (resumed,) = [s for pid, s in segments.items() if pid != child]
    assert resumed["status"] == "done" and resumed["resumed"]
    assert info["segments"] == 2 and info["killed_segments"] == 1 and info["steps"] == steps[-1]
    assert info["wall_s"] >= killed["wall_s"] + resumed["wall_s"] - 0.002
    results = json.loads((out / "results.json").read_text())
    assert results["runs"]["grpo"]["seed0"]["wall_s"] == info["wall_s"] and "wall_s" in results["notes"]


@pytest.mark.parametrize("sig,background", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                            (signal.SIGINT, True)])
def test_ctrl_c_stops_the_child_and_records_its_segment(compare, sig, background):
    """Ctrl-C (SIGINT) or SIGTERM stop compare and its child cleanly, also when compare was
    started as a background job (SIGINT ignored on entry)."""
    run, spawn, out = compare
    run_dir = out / "runs" / "grpo" / "seed0"
    parent = spawn(ignore_sigint=background)
    try:
        _wait_for(lambda: _training(run_dir), 180, "training child", parent)
        (child,) = _segments(run_dir)
        parent.send_signal(sig)  # to the compare process only, not its process group
        assert parent.wait(timeout=30) == 130
        _wait_for(lambda: _gone(child), 5, "exit of the child after Ctrl-C")
    finally:
        _kill(parent)
    assert _segments(run_dir)[child]["status"] == "interrupted"
    assert "interrupted" in (out.parent / "parent.log").read_text()


def test_child_killed_is_resumed_and_its_time_counted(compare):
    run, _, out = compare
    run_dir = out / "runs" / "grpo" / "seed0"
    killed = {}

    def kill_child():
        deadline = time.monotonic() + 180
        while not _training(run_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        (pid,) = _segments(run_dir)
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    killer = threading.Thread(target=kill_child, daemon=True)
    killer.start()
    code, printed, err = run(tokens=LONG)
    killer.join(timeout=5)
    assert code == 1 and "FAILED (killed by signal 9)" in printed, printed + err
    assert _segments(run_dir)[killed["pid"]]["status"] == "running"
    assert run_state(run_dir) == "resume"

    code, printed, err = run(tokens=LONG)
    assert code == 0 and "resume ..." in printed, printed + err
    steps = _steps(run_dir)
    assert steps == list(range(1, len(steps) + 1))
    info = json.loads((run_dir / "run_info.json").read_text())
    segments = _segments(run_dir)
    assert info["segments"] == 2 and info["killed_segments"] == 1
    assert info["wall_s"] == pytest.approx(sum(s["wall_s"] for s in segments.values()), abs=0.002)
    assert segments[killed["pid"]]["wall_s"] > 0


def test_damaged_files_are_reported_set_aside_and_redone(compare):
    run, _, out = compare
    run_dir = out / "runs" / "grpo" / "seed0"
    code, printed, err = run()
    assert code == 0, printed + err
    done = json.loads((out / "results.json").read_text())["runs"]["grpo"]["seed0"]

    # a damaged eval.json is an error for every reader, never "not done yet"
    (run_dir / "eval.json").write_text('{"start": {"pass@1": ')
    (run_dir / "run_info.json").write_text("[1, 2]")
    with pytest.raises(CorruptFile, match="eval.json"):
        run_state(run_dir)
    # rerun: both reported by name, set aside, and the run resumed from its checkpoint
    code, printed, err = run()
    assert code == 0, printed + err
    assert f"warning: {run_dir / 'eval.json'} does not parse" in err and "resumes from its last checkpoint" in err
    assert f"warning: {run_dir / 'run_info.json'} does not parse (a JSON list, not an object)" in err
    assert (run_dir / "eval.json.corrupt").read_text() == '{"start": {"pass@1": '
    assert (run_dir / "run_info.json.corrupt").read_text() == "[1, 2]"
    assert "resume ..." in printed
    again = json.loads((out / "results.json").read_text())["runs"]["grpo"]["seed0"]
    assert again["end_pass@1"] == done["end_pass@1"] and again["steps"] == done["steps"]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["segments"] == 2 and info["wall_s"] > done["wall_s"]  # the time summed again, over both

    # no checkpoint to resume from: redone from the start, and what was set aside stays
    (run_dir / "eval.json").write_text("not json")
    for step in (run_dir / "ckpt").glob("step_*"):
        step.rename(step.with_name("gone_" + step.name))
    code, printed, err = run()
    assert code == 0, printed + err
    assert "eval.json does not parse" in err and "redone from the start" in err and "train ..." in printed
    assert (run_dir / "eval.json.corrupt").exists() and (run_dir / "run_info.json.corrupt").exists()
    assert (run_dir / "eval.json.corrupt.1").read_text() == "not json"
    assert json.loads((run_dir / "run_info.json").read_text())["segments"] == 1


def test_metrics_lines_that_do_not_parse_are_reported(tmp_path, capsys):
    lines = [json.dumps({"step": 1, "tokens/total": 40}), "{not json", json.dumps({"step": 2}), '{"step": 3, "tok']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2]
    err = capsys.readouterr().err
    for n in (2, 4):
        assert f"{tmp_path / 'metrics.jsonl'}:{n}: skipped a line that does not parse" in err
    read_metrics(tmp_path)  # readers run often: each problem is reported once
    assert capsys.readouterr().err == ""


def test_a_damaged_run_is_left_out_of_results_by_name(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "grpo" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "eval.json").write_text(json.dumps({"start": {}, "end": {}}))
    (run_dir / "run_info.json").write_text('{"wall_s": 1')
    args = SimpleNamespace(seeds=1, tokens=10, config=None, overrides=[], eval_every_tokens=None)
    results = collect(tmp_path, [("grpo", "grpo")], args)
    assert results["runs"]["grpo"] == {} and "run_info.json does not parse" in results["left_out"]["runs/grpo/seed0"]
    assert "left out of results.json" in capsys.readouterr().err


def test_the_parent_watch_ends_an_orphan_without_the_kernel_signal(tmp_path):
    """The portable fallback alone (no parent-death signal armed): a child whose parent dies exits
    within about a heartbeat, its segment marked ``orphaned``."""
    grandchild = ("import os, sys, time; from pathlib import Path; from explorl.compare.child import Segment; "
                  "Segment(Path(sys.argv[1]), (time.time(), time.perf_counter()), resumed=False, "
                  "parent=os.getppid()).start(); time.sleep(60)")
    middle = ("import subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', {grandchild!r}, sys.argv[1]]); "
              "print(p.pid, flush=True); time.sleep(60)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    parent = subprocess.Popen([sys.executable, "-c", middle, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True)
    pid = None
    try:
        pid = int(parent.stdout.readline())
        _wait_for(lambda: pid in (_segments(tmp_path) if (tmp_path / "segments").exists() else {}), 30,
                  "heartbeat", parent)
        parent.kill()
        parent.wait()
        _wait_for(lambda: _gone(pid), 5, "exit of the orphan")
    finally:
        _kill(parent)
        if pid is not None and not _gone(pid):
            os.kill(pid, signal.SIGKILL)
    assert _segments(tmp_path)[pid]["status"] == "orphaned"


def test_a_run_folder_held_by_another_writer_is_waited_for_then_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare_module, "RUN_LOCK_WAIT_S", 1.0)
    run_dir = tmp_path / "seed0"
    hold = ("import sys, time; from explorl.folder_lock import FolderLock; lock = FolderLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(float(sys.argv[2]))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def holder(seconds):
        proc = subprocess.Popen([sys.executable, "-c", hold, str(run_dir), str(seconds)], stdout=subprocess.PIPE,
                                env=env, text=True)
        assert proc.stdout.readline() == "held\n"
        return proc

    proc = holder(60)  # never lets go: refused, naming it
    try:
        with pytest.raises(FolderLocked, match=f"pid {proc.pid}.*still there after 1 s"):
            compare_module._wait_for_writer(run_dir)
    finally:
        _kill(proc)
    assert "waiting up to 1 s" in capsys.readouterr().err
    proc = holder(0.3)  # on its way out: waited for
    try:
        compare_module._wait_for_writer(run_dir)
    finally:
        _kill(proc)
    assert "the other writer has exited; continuing" in capsys.readouterr().err
