"""``explorl compare``: recipes × seeds trained to the same budget of generated tokens.

The fair unit is generated response tokens, not steps: every run gets ``train.max_tokens =
--tokens`` and a step cap that never binds, so a method that spends more rollouts per step
takes fewer steps. Each run is a child process (``_child``) in ``OUT/runs/<recipe>/seed<k>``
that trains, evaluates before and after, and writes its own wall time and peak memory to
``run_info.json``. The study is resumable: finished runs are skipped, interrupted ones
continue from their last checkpoint, so rerunning the same command completes it.

Outputs: ``OUT/results.json`` (per run and per recipe mean / std / min / max over seeds),
``OUT/report.html`` (``explorl.bench.report``) and a leaderboard on the terminal.

The pass@1-vs-tokens curve is the training pass rate of each step (the fraction of that step's
rollouts that are correct: an on-policy proxy, measured on training problems at the training
temperature) placed at the tokens generated before the step; its area (trapezoid, normalised
by the token range) is ``auc_pass1_vs_tokens``. ``--eval-every-tokens E`` adds held-out
evaluations every E generated tokens, logged as ``heldout/…`` metrics in ``metrics.jsonl``,
and then ``auc_heldout_pass1_vs_tokens`` over start, those points and end.

Crashes and interruptions. One writer per folder: the study folder is locked
(``explorl.train.runlock.FolderLock``) for the whole of ``explorl compare``, so a second compare
on the same ``--out`` stops at once with an error naming the holder, and each run folder is
locked by its trainer. A run folder still locked when compare wants it (a writer started some
other way, or a child on its way out) is waited for, up to ``RUN_LOCK_WAIT_S`` seconds with a
message, and then refused with an error naming the holder's pid. A child dies with its parent:
on Linux it arms the parent-death signal (``PR_SET_PDEATHSIG`` = SIGKILL) and then checks that
its parent is still the compare process that started it (closing the race with a parent that
died first); everywhere, a watcher thread in the child exits it within about a second of its
parent changing. SIGINT (Ctrl-C) in compare is passed on to the running child (SIGINT, then
SIGKILL after ``CHILD_STOP_S`` seconds), so nothing is left training. Rerunning the same command
resumes: finished runs are skipped, interrupted ones continue from their last checkpoint, and a
run with no checkpoint to continue from starts over.

Wall time. Every attempt at a run (a segment: one child process) keeps a heartbeat file,
``segments/<start-epoch>-<pid>.json``, rewritten atomically every ``HEARTBEAT_S`` seconds with
its wall time so far and peak resident memory, and a final status (``done``, ``failed``,
``interrupted``, ``orphaned``) when it ends; a segment killed outright (SIGKILL, power loss)
keeps ``running`` and counts up to its last heartbeat, at most ``HEARTBEAT_S`` short of the truth.
A segment's wall time runs from the child's first line of Python (interpreter start-up, tens of
milliseconds, is not counted) to its end: model loading, the evaluations, training and
checkpoints. ``run_info.json``'s ``wall_s`` is the sum over every segment of the run and its
``peak_rss_mb`` the largest segment's; the shared warm start (in the compare process) is not
counted, nor are attempts wiped when a run with no checkpoint started over.

Damaged files. A missing ``eval.json`` / ``run_info.json`` / segment file is the normal "not done
yet" state. One that exists but does not parse is never read as missing: ``_read_json`` raises
``CorruptFile``; before launching, compare prints a warning naming the file and the parse error,
moves it aside to ``<name>.corrupt`` (kept, never deleted, not even when the run starts over)
and says whether the run then resumes from its checkpoint or is redone from the start. Lines of
``metrics.jsonl`` that do not parse (a run killed mid-write can leave a partial last line) are
skipped by the readers here with a warning naming the file and line number.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

NEVER_BINDING_STEPS = 10**6
RESERVED_SETS = {
    "recipe": "choose recipes with --recipes",
    "seed": "seeds are 0..S-1, chosen with --seeds",
    "train.steps": "the budget is --tokens; the step cap is set so that it never binds",
    "train.max_tokens": "the budget is --tokens",
}
MAX_K = 64
HEARTBEAT_S = 1.0  # a segment's heartbeat (and parent watch) interval in the child
RUN_LOCK_WAIT_S = 30.0  # how long compare waits for another writer of a run folder before refusing
CHILD_STOP_S = 10.0  # after SIGINT, how long the child gets to stop before SIGKILL
PARENT_ENV = "EXPLORL_COMPARE_PARENT"  # the compare process's pid, for the child's parent watch
# the child records its start before importing anything heavy, so its wall time includes imports
CHILD_CODE = ("import time; _t = (time.time(), time.perf_counter()); "
              "from explorl.bench.compare import _child; _child(started=_t)")


class CorruptFile(ValueError):
    """A result file that exists but does not parse (never the same as a missing one)."""

    def __init__(self, path: Path, error: str):
        super().__init__(f"{path} does not parse ({error})")
        self.path, self.error = Path(path), error


# ---- the study -----------------------------------------------------------------------------
def run_compare(args) -> int:
    """Train every recipe × seed (or skip / resume it), then write results.json, report.html and
    print the leaderboard. Returns the exit code (1 when a run failed)."""
    from explorl.train.runlock import FolderLock
    specs = _check_args(args)
    out = Path(args.out)
    lock = FolderLock(out, "comparison").acquire()  # a second compare on this --out stops here
    try:
        return _run_study(args, specs, out)
    finally:
        lock.release()


def _run_study(args, specs: list[tuple[str, str]], out: Path) -> int:
    (out / "runs").mkdir(parents=True, exist_ok=True)
    jobs = [(label, spec, seed) for label, spec in specs for seed in range(args.seeds)]
    failed = []
    print(f"compare: {len(specs)} recipe(s) x {args.seeds} seed(s), {args.tokens} generated tokens each, in {out}",
          flush=True)
    try:
        for label, spec, seed in jobs:
            run_dir = out / "runs" / label / f"seed{seed}"
            _wait_for_writer(run_dir)
            set_aside_corrupt(run_dir)
            _check_same_config(args, spec, seed, run_dir)
        _warm_start(args, [(spec, seed) for label, spec, seed in jobs
                           if run_state(out / "runs" / label / f"seed{seed}") != "done"])
        for i, (label, spec, seed) in enumerate(jobs, 1):
            run_dir = out / "runs" / label / f"seed{seed}"
            head = f"[{i}/{len(jobs)}] {label:<{max(len(x) for x, _ in specs)}} seed {seed}"
            state = run_state(run_dir)
            if state == "done":
                print(f"{head}: skip (done) {_run_line(run_dir)}", flush=True)
                continue
            print(f"{head}: {'resume' if state == 'resume' else 'train'} ... ", end="", flush=True)
            code = _launch(args, spec, seed, run_dir, resume=state == "resume")
            if code != 0:
                failed.append(f"{label} seed {seed}")
                how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
                print(f"FAILED ({how}); log: {run_dir / 'train.log'}", flush=True)
                print(_tail(run_dir / "train.log"), file=sys.stderr, flush=True)
                continue
            print(_run_line(run_dir), flush=True)
            write_results(out, collect(out, specs, args))
    except KeyboardInterrupt:
        print("\nexplorl compare: interrupted; rerun the same command to continue "
              "(finished runs are skipped, the interrupted one resumes)", file=sys.stderr)
        return 130
    results = collect(out, specs, args)
    write_results(out, results)
    from explorl.bench.report import write_report
    report = write_report(out, results)
    print(f"\nleaderboard ({args.tokens} generated tokens per run, mean ± std over {args.seeds} seed(s)):")
    print(format_leaderboard(results))
    print(f"\nresults: {out / 'results.json'}\nreport:  {report}")
    if failed:
        print(f"explorl compare: {len(failed)} run(s) failed: {', '.join(failed)} "
              f"(see their train.log; rerun to retry)", file=sys.stderr)
        return 1
    return 0


def _check_args(args) -> list[tuple[str, str]]:
    """Validate everything that can be checked before any training; returns (label, spec) pairs."""
    from explorl.config import load_config, parse_override, recipe_path
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.tokens < 1:
        raise ValueError(f"--tokens must be >= 1 (generated tokens per run), got {args.tokens}")
    if args.eval_every_tokens is not None and args.eval_every_tokens < 1:
        raise ValueError(f"--eval-every-tokens must be >= 1, got {args.eval_every_tokens}")
    for item in args.overrides:
        key = ".".join(parse_override(item)[0])
        if key in RESERVED_SETS:
            raise ValueError(f"--set {item!r}: {key} is set by compare ({RESERVED_SETS[key]})")
    names = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if not names:
        raise ValueError("--recipes: give at least one recipe, e.g. --recipes grpo,clip_higher")
    specs, seen = [], {}
    for name in names:
        path = Path(name)
        if path.suffix in (".yaml", ".yml") and not path.exists():
            raise ValueError(f"recipe {name!r}: file not found")
        recipe_path(name)  # an unknown name raises, naming it and the known recipes
        label = path.stem if path.suffix in (".yaml", ".yml") else name
        if label in seen:
            raise ValueError(f"--recipes: {name!r} and {seen[label]!r} would share the run folder "
                             f"runs/{label}; rename one")
        seen[label] = name
        try:  # the whole config and its plug-ins, so a bad recipe fails now rather than mid-study
            from explorl.train.plugins import Plugins
            Plugins.from_config(load_config(args.config, _train_sets(args, 0), name))
        except ValueError as err:
            raise ValueError(f"recipe {name!r}: {err}") from None
        specs.append((label, name))
    return specs


def _warm_start(args, pending: list[tuple[str, int]]) -> None:
    """Warm-start the testbed model(s) the pending runs share, here and once, so that no run's
    wall time includes it (a recipe may change the model or tasks, hence one check per recipe)."""
    from explorl.config import load_config
    from explorl.train.warmup import warm_model_dir, warmup
    done = set()
    for spec, seed in pending:
        cfg = load_config(args.config, _train_sets(args, seed), spec)
        if cfg.model.path or warm_model_dir(cfg) in done:
            continue
        done.add(warm_model_dir(cfg))
        if not warm_model_dir(cfg).exists():
            print(f"warm start of the testbed model ({cfg.model.warmup.steps} steps, shared by the runs, "
                  f"not counted in their time) ... ", end="", flush=True)
            start = time.perf_counter()
            warmup(cfg, log=lambda *_: None)
            print(f"{time.perf_counter() - start:.1f} s", flush=True)


def _check_same_config(args, spec: str, seed: int, run_dir: Path) -> None:
    """A run folder that will be skipped or resumed must hold the configuration asked for now."""
    import yaml
    from explorl.config import load_config
    if run_state(run_dir) == "fresh" or not (run_dir / "config.yaml").exists():
        return
    want = _flat(json.loads(json.dumps(load_config(args.config, _train_sets(args, seed), spec).to_dict())))
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{run_dir / 'config.yaml'} does not parse ({' '.join(str(err).split())}), so this run "
                         f"cannot be checked against the configuration asked for; move it aside to resume "
                         f"the run anyway, or delete {run_dir} to redo it") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{run_dir / 'config.yaml'} does not hold a configuration; move it aside to resume "
                         f"the run anyway, or delete {run_dir} to redo it")
    have = _flat(json.loads(json.dumps(saved)))
    diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if diff:
        shown = ", ".join(f"{k}: {have.get(k)!r} there, {want.get(k)!r} now" for k in diff[:4])
        raise ValueError(f"{run_dir} was made with another configuration ({shown}"
                         f"{', ...' if len(diff) > 4 else ''}); use another --out or delete that folder")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "tasks":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _train_sets(args, seed: int) -> list[str]:
    sets = [*args.overrides, f"seed={seed}", f"train.max_tokens={args.tokens}", f"train.steps={NEVER_BINDING_STEPS}"]
    return sets + ([f"eval.every_tokens={args.eval_every_tokens}"] if args.eval_every_tokens else [])


def run_state(run_dir: Path) -> str:
    """``done`` (eval end and run_info present), ``resume`` (a checkpoint) or ``fresh``. A file that
    exists but does not parse raises ``CorruptFile`` (``set_aside_corrupt`` deals with those)."""
    if not run_dir.exists():
        return "fresh"
    if "end" in _read_json(run_dir / "eval.json") and _read_json(run_dir / "run_info.json"):
        return "done"
    if _has_checkpoint(run_dir):
        return "resume"
    return "fresh"


def _has_checkpoint(run_dir: Path) -> bool:
    """Whether any checkpoint folder ``ckpt/step_N`` is there (the trainer resumes from the newest
    intact one); such a run folder is resumed, never wiped."""
    ckpt = run_dir / "ckpt"
    return ckpt.is_dir() and any(p.is_dir() and p.name[5:].isdigit() for p in ckpt.glob("step_*"))


def set_aside_corrupt(run_dir: Path, warn=None) -> list[Path]:
    """Move every result file of ``run_dir`` that exists but does not parse (eval.json,
    run_info.json, segment heartbeats) to ``<name>.corrupt``, with a warning naming the file,
    the parse error and what happens to the run next. Returns the new paths."""
    warn = warn or _warn
    files = [run_dir / "eval.json", run_dir / "run_info.json", *sorted((run_dir / "segments").glob("*.json"))]
    moved = []
    for path in files:
        error = _parse_error(path)
        if error is None:
            continue
        aside = _aside(path)
        path.rename(aside)
        moved.append((path, error, aside))
    if moved:
        state = run_state(run_dir)
        then = {"resume": "the run resumes from its last checkpoint (what the file held is computed again)",
                "fresh": "the run is redone from the start (it has no checkpoint to resume from)",
                "done": "the run stays done"}[state]
        for path, error, aside in moved:
            lost = "; that attempt's time is left out of the run's wall time" if path.parent.name == "segments" else ""
            warn(f"{path} does not parse ({error}); moved to {aside.name} (kept){lost}; {then}")
    return [aside for _, _, aside in moved]


def _aside(path: Path) -> Path:
    """``<name>.corrupt``, or ``<name>.corrupt.<i>`` when an earlier one is there (none is overwritten)."""
    aside, i = path.with_name(path.name + ".corrupt"), 1
    while aside.exists():
        aside, i = path.with_name(f"{path.name}.corrupt.{i}"), i + 1
    return aside


def _wait_for_writer(run_dir: Path) -> None:
    """Return once no live process holds ``run_dir``'s lock: wait up to ``RUN_LOCK_WAIT_S`` with a
    message (say, a child of a killed compare on its way out), then refuse naming the holder."""
    if not (run_dir / ".lock").exists():
        return
    from explorl.train.runlock import FolderLock, FolderLocked
    deadline = None
    while True:
        try:
            FolderLock(run_dir, "run").acquire().release()
        except FolderLocked as err:
            if deadline is None:
                deadline = time.monotonic() + RUN_LOCK_WAIT_S
                _warn(f"{err}; waiting up to {RUN_LOCK_WAIT_S:.0f} s for it to exit")
            elif time.monotonic() >= deadline:
                raise FolderLocked(f"{err} (still there after {RUN_LOCK_WAIT_S:.0f} s: compare will not start "
                                   f"a second writer in that folder)") from None
            time.sleep(0.2)
            continue
        if deadline is not None:
            _warn(f"{run_dir}: the other writer has exited; continuing")
        return


def _start_over(folder: Path) -> None:
    """Empty a stale run folder (no checkpoint to resume from), keeping the lock file and every
    ``*.corrupt*`` file or folder set aside earlier, wherever it is in the tree."""
    for entry in folder.iterdir():
        if ".corrupt" in entry.name or entry.name == ".lock":
            continue
        if entry.is_dir() and not entry.is_symlink():
            _start_over(entry)
            if not any(entry.iterdir()):
                entry.rmdir()
        else:
            entry.unlink()


def _launch(args, spec: str, seed: int, run_dir: Path, resume: bool) -> int:
    """Run one child to its end and return its exit status (negative: killed by that signal).
    Ctrl-C (or any error) here stops the child before it propagates."""
    _wait_for_writer(run_dir)
    if not resume and run_dir.exists():  # a stale folder without a checkpoint: start over
        _start_over(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", CHILD_CODE, "--out", str(run_dir), "--recipe", spec]
    if args.config:
        cmd += ["--config", str(args.config)]
    for item in _train_sets(args, seed):
        cmd += ["--set", item]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the checkout holding this explorl package
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env[PARENT_ENV] = str(os.getpid())
    with (run_dir / "train.log").open("a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            return proc.wait()
        except BaseException:
            _stop(proc)
            raise


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT the child (it records its segment as interrupted and exits), SIGKILL it if it is still
    there after ``CHILD_STOP_S`` seconds; returns once it is gone, also on a second Ctrl-C."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=CHILD_STOP_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join("    " + line for line in text[-lines:])


def _run_line(run_dir: Path) -> str:
    try:
        info, ev = _read_json(run_dir / "run_info.json"), _read_json(run_dir / "eval.json")
    except CorruptFile as err:
        return f"({err}; rerun to redo it)"
    p1 = lambda part: ev.get(part, {}).get("pass@1", {}).get("all", float("nan"))  # noqa: E731
    return (f"{info.get('tokens', '?')} tokens, {info.get('steps', '?')} steps, "
            f"{info.get('wall_s', float('nan')):.1f} s, pass@1 {p1('start'):.3f} -> {p1('end'):.3f}")


# ---- the child process ---------------------------------------------------------------------
def _child(argv=None, started: tuple[float, float] | None = None) -> None:
    """One run, in its own process: train (or resume) to the token budget, evaluate, then write
    ``run_info.json`` with the run's wall time and peak resident memory summed / maxed over all its
    segments. ``started`` is (epoch, perf_counter) at the process's first line of Python."""
    import argparse
    started = started or (time.time(), time.perf_counter())
    parent = int(os.environ.get(PARENT_ENV) or 0) or None
    if parent is not None:
        _die_with_parent(parent)
    from explorl.cli import _config_args, _load
    p = argparse.ArgumentParser(prog="explorl compare (run)")
    _config_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    segment = Segment(out, started, resumed=args.resume, parent=parent).start()
    status = "failed"
    try:
        from explorl.train.loop import Trainer
        trainer = Trainer(_load(args), out, resume=args.resume, progress=False)
        trainer.run()
        status = "done"
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the record short
        status = "interrupted"
        print("interrupted; the run continues from its last checkpoint when compare is rerun", flush=True)
        raise SystemExit(130) from None
    finally:
        segment.finish(status)
    segments = read_segments(out, log=lambda msg: print(f"warning: {msg}", flush=True))
    info = {"wall_s": round(sum(s.get("wall_s", 0.0) for s in segments), 3),
            "peak_rss_mb": max(s.get("peak_rss_mb", 0.0) for s in segments),
            "segments": len(segments), "killed_segments": sum(s.get("status") == "killed" for s in segments),
            "steps": trainer.step, "tokens": trainer.tokens}
    _write_atomic(out / "run_info.json", json.dumps(info, indent=2))
    print(f"run_info: {info}")


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux), then make sure the parent
    is still the one that started it: one that died before the signal was armed is caught here.
    Elsewhere the ``Segment`` thread's parent watch does the job within ``HEARTBEAT_S``."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the parent watch remains
    if os.getppid() != parent:
        print(f"the compare process (pid {parent}) is gone; not starting", flush=True)
        os._exit(1)


class Segment:
    """This process's attempt at the run: ``segments/<start-epoch>-<pid>.json`` holding its status,
    wall time so far and peak memory, rewritten atomically every ``HEARTBEAT_S`` seconds by a daemon
    thread (which also exits the process if its parent changes) and once more at the end."""

    def __init__(self, out: Path, started: tuple[float, float], resumed: bool, parent: int | None):
        self.epoch, self.t0 = started
        self.resumed, self.parent = resumed, parent
        self.path = out / "segments" / f"{int(self.epoch)}-{os.getpid()}.json"
        self._lock, self._stop, self._final = threading.Lock(), threading.Event(), False

    def start(self) -> "Segment":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write("running")
        threading.Thread(target=self._beat, name="explorl-segment", daemon=True).start()
        return self

    def write(self, status: str, final: bool = False) -> None:
        with self._lock:
            if self._final:
                return
            self._final = final
            record = {"status": status, "pid": os.getpid(), "resumed": self.resumed,
                      "started": round(self.epoch, 3), "heartbeat": round(time.time(), 3),
                      "wall_s": round(time.perf_counter() - self.t0, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}
            # written in place here rather than by checkpoint.write_text_atomic, whose import brings in
            # torch: the first heartbeat goes out before that second or two of start-up
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.path)

    def finish(self, status: str) -> None:
        self._stop.set()
        self.write(status, final=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if self.parent is not None and os.getppid() != self.parent:
                try:
                    self.write("orphaned", final=True)
                finally:
                    os._exit(1)
            try:
                self.write("running")
            except OSError as err:  # a full disk, say: keep watching the parent, try again next beat
                print(f"warning: could not write {self.path} ({err})", flush=True)


def read_segments(run_dir: Path, log=None) -> list[dict]:
    """Every segment of a run, read once none is running (the child calls it after finishing its
    own): the older ``segments.jsonl`` lines, then the heartbeat files, oldest first; one still
    ``running`` was killed, counts up to its last heartbeat and reads as ``killed``. Files or lines
    that do not parse are skipped and reported."""
    log = log or _warn
    segments = []
    legacy = run_dir / "segments.jsonl"
    if legacy.exists():
        for n, line in enumerate(legacy.read_text(errors="replace").splitlines(), 1):
            try:
                if line.strip():
                    segments.append(json.loads(line))
            except json.JSONDecodeError as err:
                log(f"{legacy}:{n}: skipped a line that does not parse ({err})")
    for path in sorted((run_dir / "segments").glob("*.json")):
        try:
            record = _read_json(path)
        except CorruptFile as err:
            log(f"{err}; that attempt's time is left out of the run's wall time")
            continue
        if record.get("status") == "running":
            record["status"] = "killed"
        segments.append(record)
    return segments


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


# ---- results -------------------------------------------------------------------------------
def read_metrics(run_dir: Path) -> list[dict]:
    """The run's per-step records. A line that does not parse (a run killed mid-write can leave a
    partial last line) is skipped with a warning naming the file and line number."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            _warn(f"{path}:{n}: skipped a line that does not parse ({err})", once=True)
    return records


def training_curve(metrics: list[dict]) -> tuple[list[float], list[float]]:
    """(tokens generated before the step, that step's training pass rate) per step."""
    xs, ys = [], []
    for m in metrics:
        if "reward/pass_rate" in m and "tokens/total" in m:
            xs.append(float(m["tokens/total"] - m.get("tokens/step", 0)))
            ys.append(float(m["reward/pass_rate"]))
    return xs, ys


def heldout_curve(metrics: list[dict], ev: dict) -> tuple[list[float], list[float]]:
    """Held-out pass@1 ("all") at 0 tokens (start), every ``--eval-every-tokens`` and at the end."""
    points = {}
    if "start" in ev:
        points[0.0] = ev["start"]["pass@1"]["all"]
    for m in metrics:
        if "heldout/pass@1" in m:
            points[float(m["tokens/total"])] = m["heldout/pass@1"]
    if "end" in ev and metrics:
        points[float(metrics[-1]["tokens/total"])] = ev["end"]["pass@1"]["all"]
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def auc(xs: list[float], ys: list[float]) -> float | None:
    """Area under y(x) by the trapezoid rule divided by the x range: the curve's mean height,
    in the units of y (1.0 = solved from the first token on)."""
    if not xs:
        return None
    if len(xs) == 1 or xs[-1] == xs[0]:
        return sum(ys) / len(ys)
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))
    return area / (xs[-1] - xs[0])


def run_summary(run_dir: Path, seed: int) -> dict | None:
    """One finished run's numbers, or None if it has not finished (``CorruptFile`` if one of its
    files does not parse)."""
    ev, info = _read_json(run_dir / "eval.json"), _read_json(run_dir / "run_info.json")
    if "end" not in ev or not info:
        return None
    metrics = read_metrics(run_dir)
    row = {"seed": seed, "dir": str(Path("runs") / run_dir.parent.name / run_dir.name),
           "tokens": metrics[-1]["tokens/total"] if metrics else info.get("tokens", 0),
           "steps": metrics[-1]["step"] if metrics else info.get("steps", 0),
           "rollouts": sum(m.get("rollouts", 0) for m in metrics),
           "wall_s": info.get("wall_s"), "train_s": round(sum(m.get("time/step", 0.0) for m in metrics), 3),
           "peak_rss_mb": info.get("peak_rss_mb"), "segments": info.get("segments", 1)}
    row["auc_pass1_vs_tokens"] = auc(*training_curve(metrics))
    hx, hy = heldout_curve(metrics, ev)
    row["auc_heldout_pass1_vs_tokens"] = auc(hx, hy) if len(hx) > 2 else None
    for part in ("start", "end"):
        for k in _ks(ev[part]):
            row[f"{part}_pass@{k}"] = ev[part][f"pass@{k}"]["all"]
        row[f"{part}_entropy_eval"] = ev[part].get("entropy", {}).get("all")
        row[f"{part}_distinct_correct"] = ev[part].get("distinct_correct", {}).get("all")
    ent = [m["entropy/rollout"] for m in metrics if "entropy/rollout" in m]
    row["entropy_rollout_last"] = ent[-1] if ent else None
    zero = [m["adv/frac_zero_std"] for m in metrics if "adv/frac_zero_std" in m]
    row["frac_zero_std_mean"] = sum(zero) / len(zero) if zero else None
    nonzero = [m["adv/frac_rollouts_nonzero"] for m in metrics if "adv/frac_rollouts_nonzero" in m]
    row["frac_rollouts_nonzero_mean"] = sum(nonzero) / len(nonzero) if nonzero else None
    row["pass@k"] = {part: {f"pass@{k}": ev[part][f"pass@{k}"] for k in _ks(ev[part])} for part in ("start", "end")}
    return row


def _ks(part: dict) -> list[int]:
    return sorted(int(key[5:]) for key in part if key.startswith("pass@") and int(key[5:]) <= MAX_K)


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one seed), min and max."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}


def collect(out: Path, specs: list[tuple[str, str]], args) -> dict:
    """results.json's content from the run folders (finished runs only)."""
    runs, summary, left_out = {}, {}, {}
    for label, spec in specs:
        rows = []
        for seed in range(args.seeds):
            run_dir = out / "runs" / label / f"seed{seed}"
            try:
                row = run_summary(run_dir, seed)
            except CorruptFile as err:
                left_out[str(run_dir.relative_to(out))] = str(err)
                _warn(f"{err}; the run is left out of results.json (rerun compare to redo it)", once=True)
                continue
            if row is not None:
                rows.append(row)
        runs[label] = {f"seed{r['seed']}": r for r in rows}
        if not rows:
            continue
        scalars = sorted({k for r in rows for k, v in r.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed"})
        agg = {"recipe": spec, "seeds": len(rows),
               "metrics": {k: spread([r[k] for r in rows if r.get(k) is not None]) for k in scalars
                           if any(r.get(k) is not None for r in rows)}}
        by_source = {}
        for part in ("start", "end"):
            for pk in rows[0]["pass@k"][part]:
                sources = rows[0]["pass@k"][part][pk]
                by_source.setdefault(part, {})[pk] = {
                    src: spread([r["pass@k"][part][pk][src] for r in rows if src in r["pass@k"][part].get(pk, {})])
                    for src in sources}
        agg["pass@k"] = by_source
        summary[label] = agg
    ranked = sorted(summary, key=lambda lb: (-summary[lb]["metrics"].get("end_pass@1", {}).get("mean", -1.0),
                                             -(summary[lb]["metrics"].get("auc_pass1_vs_tokens", {}).get("mean", 0))))
    return {
        "settings": {"recipes": {label: spec for label, spec in specs}, "seeds": args.seeds, "tokens": args.tokens,
                     "config": args.config, "overrides": list(args.overrides),
                     "eval_every_tokens": args.eval_every_tokens},
        "notes": {
            "budget": "every run stops once train.max_tokens = tokens response tokens were generated "
                      "(all generated tokens count, also of rollouts later dropped); steps never bind",
            "auc_pass1_vs_tokens": "area under the training pass rate (fraction of a step's rollouts that are "
                                   "correct; an on-policy proxy on training problems) against the tokens generated "
                                   "before that step, trapezoid rule, divided by the token range",
            "auc_heldout_pass1_vs_tokens": "same over held-out pass@1 at start, every eval_every_tokens and end "
                                           "(null without --eval-every-tokens)",
            "spread": "per recipe: mean, sample std, min and max over seeds",
            "wall_s": "per run: the sum over its segments (one child process each: the first attempt and every "
                      "resume) of the time from the child's start to its end, model loading, evaluations and "
                      "checkpoints included; a segment killed outright counts up to its last heartbeat "
                      f"(every {HEARTBEAT_S:g} s); the shared warm start is not counted",
            "peak_rss_mb": "per run: the largest peak resident memory of its segments",
        },
        **({"left_out": left_out} if left_out else {}),
        "leaderboard": ranked,
        "summary": summary,
        "runs": runs,
    }


def write_results(out: Path, results: dict) -> None:
    _write_atomic(out / "results.json", json.dumps(results, indent=2))


# ---- the leaderboard -----------------------------------------------------------------------
def leaderboard_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the leaderboard (recipes ranked by mean end pass@1 over all sources)."""
    summary = results["summary"]
    has16 = any("end_pass@16" in summary[lb]["metrics"] for lb in summary)
    has_ho = any("auc_heldout_pass1_vs_tokens" in summary[lb]["metrics"] for lb in summary)
    header = ["#", "recipe", "pass@1", "pass@1 before"] + (["pass@16"] if has16 else []) + \
             ["AUC train"] + (["AUC held-out"] if has_ho else []) + \
             ["entropy", "zero-std", "nonzero-adv", "tokens", "steps", "wall s", "peak MB", "seeds"]
    rows = []
    for rank, label in enumerate(results["leaderboard"], 1):
        m = summary[label]["metrics"]
        row = [str(rank), label, _pm(m, "end_pass@1"), _pm(m, "start_pass@1", std=False)]
        if has16:
            row.append(_pm(m, "end_pass@16"))
        row.append(_pm(m, "auc_pass1_vs_tokens"))
        if has_ho:
            row.append(_pm(m, "auc_heldout_pass1_vs_tokens"))
        row += [_pm(m, "end_entropy_eval", std=False), _pm(m, "frac_zero_std_mean", std=False),
                _pm(m, "frac_rollouts_nonzero_mean", std=False),
                _pm(m, "tokens", fmt="{:.0f}", std=False), _pm(m, "steps", fmt="{:.1f}", std=False),
                _pm(m, "wall_s", fmt="{:.1f}", std=False), _num(m.get("peak_rss_mb", {}).get("max"), "{:.0f}"),
                str(summary[label]["seeds"])]
        rows.append(row)
    return header, rows


def _pm(m: dict, key: str, fmt: str = "{:.3f}", std: bool = True) -> str:
    if key not in m:
        return "-"
    s = fmt.format(m[key]["mean"])
    return s + f" ± {fmt.format(m[key]['std'])}" if std and m[key]["n"] > 1 else s


def _num(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def format_leaderboard(results: dict) -> str:
    header, rows = leaderboard_rows(results)
    if not rows:
        return "(no finished runs)"
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 1 else c.rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


# ---- files ---------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    """A JSON object file: ``{}`` when it does not exist (not written yet), ``CorruptFile`` when it
    exists but does not parse or is not an object."""
    data, error = _load_json(path)
    if error is not None:
        raise CorruptFile(path, error)
    return {} if data is None else data


def _parse_error(path: Path) -> str | None:
    """Why an existing file is not a JSON object, or None (also when it does not exist)."""
    return _load_json(path)[1]


def _load_json(path: Path) -> tuple[dict | None, str | None]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, str(err)
    return (data, None) if isinstance(data, dict) else (None, f"a JSON {type(data).__name__}, not an object")


def _write_atomic(path: Path, text: str) -> None:
    from explorl.train.checkpoint import write_text_atomic  # imported here: it brings in torch
    write_text_atomic(path, text)


_warned: set[str] = set()


def _warn(message: str, once: bool = False) -> None:
    """A warning line on stderr (``once``: not repeated in this process, for readers that run often)."""
    if once and message in _warned:
        return
    _warned.add(message)
    print(f"explorl compare: warning: {message}", file=sys.stderr, flush=True)
