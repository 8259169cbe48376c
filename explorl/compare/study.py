"""``explorl compare``: recipes × seeds trained to the same budget of generated tokens.

The fair unit is generated response tokens, not steps: every run gets ``train.max_tokens =
--tokens`` and a step cap that never binds, so a method that spends more rollouts per step
takes fewer steps. Each run is a child process (``_child``) in ``OUT/runs/<recipe>/seed<k>``
that trains, evaluates before and after, and writes its own wall time and peak memory to
``run_info.json``. The study is resumable: finished runs are skipped, interrupted ones
continue from their last checkpoint, so rerunning the same command completes it.

Outputs: ``OUT/results.json`` (per run and per recipe mean / std / min / max over seeds),
``OUT/report.html`` (``explorl.compare.report``) and a leaderboard on the terminal.

The pass@1-vs-tokens curve is the training pass rate of each step (the fraction of that step's
rollouts that are correct: an on-policy proxy, measured on training problems at the training
temperature) placed at the tokens generated before the step; its area (trapezoid, normalised
by the token range) is ``auc_pass1_vs_tokens``. ``--eval-every-tokens E`` adds held-out
evaluations every E generated tokens, logged as ``heldout/…`` metrics in ``metrics.jsonl``,
and then ``auc_heldout_pass1_vs_tokens`` over start, those points and end.

Crashes and interruptions. One writer per folder: the study folder is locked
(``explorl.folder_lock.FolderLock``) for the whole of ``explorl compare``, so a second compare
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
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from explorl.compare.child import PARENT_ENV
from explorl.compare.files import CorruptFile, _parse_error, _read_json, _warn
from explorl.compare.plan import MATCHES, Entry, NotDerivable, derived_sets, sft_phase_guidance
from explorl.compare.results import collect, format_leaderboard, write_results

NEVER_BINDING_STEPS = 10**6
RESERVED_SETS = {
    "recipe": "choose recipes with --recipes",
    "seed": "seeds are 0..S-1, chosen with --seeds",
    "train.steps": "the budget is --tokens; the step cap is set so that it never binds",
    "train.max_tokens": "the budget is --tokens",
}
RUN_LOCK_WAIT_S = 30.0  # how long compare waits for another writer of a run folder before refusing
CHILD_STOP_S = 10.0  # after SIGINT, how long the child gets to stop before SIGKILL
# the child records its start before importing anything heavy, so its wall time includes imports
CHILD_CODE = ("import time; _t = (time.time(), time.perf_counter()); "
              "from explorl.compare.child import _child; _child(started=_t)")


# ---- the study -----------------------------------------------------------------------------
class interruptible:
    """While compare runs, SIGTERM and SIGINT stop it as Ctrl-C does (the running children are
    stopped, rerunning continues), also when it was started in the background by a shell that
    set SIGINT to be ignored."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        import threading
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.saved[sig] = signal.signal(sig, self._stop)
        return self

    @staticmethod
    def _stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False


def run_compare(args) -> int:
    """Train every recipe × seed (or skip / resume it), then write results.json, report.html and
    print the leaderboard. Returns the exit code (1 when a run failed)."""
    from explorl.folder_lock import FolderLock
    entries = _check_args(args)
    out = Path(args.out)
    lock = FolderLock(out, "comparison").acquire()  # a second compare on this --out stops here
    try:
        return _run_study(args, entries, out)
    finally:
        lock.release()


def _run_study(args, entries: list[Entry], out: Path) -> int:
    (out / "runs").mkdir(parents=True, exist_ok=True)
    jobs = [(entry, seed) for entry in entries for seed in entry.seeds]
    failed = []
    controls = sum(e.control is not None for e in entries)
    seeds = sorted({len(e.seeds) for e in entries})
    print(f"compare: {len(entries)} recipe(s){f' ({controls} of them controls)' if controls else ''} x "
          f"{'/'.join(map(str, seeds))} seed(s), {len(jobs)} run(s), {args.tokens} generated tokens each, in {out}",
          flush=True)
    try:
        for entry, seed in jobs:
            run_dir = out / "runs" / entry.label / f"seed{seed}"
            _wait_for_writer(run_dir)
            set_aside_corrupt(run_dir)
            sets = _job_sets(args, entry, seed, out)
            if sets is not None:
                _check_same_config(args, entry.spec, sets, run_dir)
        _warm_start(args, [(entry.spec, _job_sets(args, entry, seed, out, underived=True)) for entry, seed in jobs
                           if run_state(out / "runs" / entry.label / f"seed{seed}") != "done"])
        todo = []
        width = max(len(e.label) for e in entries)
        for i, (entry, seed) in enumerate(jobs, 1):
            run_dir = out / "runs" / entry.label / f"seed{seed}"
            head = f"[{i}/{len(jobs)}] {entry.label:<{width}} seed {seed}"
            state = run_state(run_dir)
            if state == "done":
                print(f"{head}: skip (done) {_run_line(run_dir)}", flush=True)
            else:
                todo.append((head, entry, seed, run_dir, state))

        def finished(head, label, seed, run_dir, code, same_line):
            lead = "" if same_line else f"{head}: "
            if code != 0:
                failed.append(f"{label} seed {seed}")
                how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
                print(f"{lead}FAILED ({how}); log: {run_dir / 'train.log'}", flush=True)
                print(_tail(run_dir / "train.log"), file=sys.stderr, flush=True)
                return
            print(f"{lead}{_run_line(run_dir)}", flush=True)
            write_results(out, collect(out, entries, args))

        def blocked(head, entry, seed, why: NotDerivable):
            """A control that cannot run: never (nothing to match) or not now (its source failed)."""
            if why.final:
                print(f"{head}: skip ({why})", flush=True)
            else:
                failed.append(f"{entry.label} seed {seed}")
                print(f"{head}: NOT RUN ({why}; rerun once it has finished)", flush=True)

        if getattr(args, "jobs", 1) <= 1:
            for head, entry, seed, run_dir, state in todo:
                try:
                    sets = _ready_sets(args, entry, seed, out, run_dir)
                except NotDerivable as why:
                    blocked(head, entry, seed, why)
                    continue
                print(f"{head}: {'resume' if state == 'resume' else 'train'} ... ", end="", flush=True)
                code = _launch(args, entry.spec, sets, run_dir, resume=state == "resume")
                finished(head, entry.label, seed, run_dir, code, same_line=True)
        else:
            _run_parallel(args, todo, finished, blocked, out)
    except KeyboardInterrupt:
        print("\nexplorl compare: interrupted; rerun the same command to continue "
              "(finished runs are skipped, the interrupted one resumes)", file=sys.stderr)
        return 130
    results = collect(out, entries, args)
    write_results(out, results)
    from explorl.compare.report import write_report
    report = write_report(out, results)
    print(f"\nleaderboard ({args.tokens} generated tokens per run, mean ± std over the seeds):")
    print(format_leaderboard(results))
    print(f"\nresults: {out / 'results.json'}\nreport:  {report}")
    if failed:
        print(f"explorl compare: {len(failed)} run(s) failed or not run: {', '.join(failed)} "
              f"(see their train.log; rerun to retry)", file=sys.stderr)
        return 1
    return 0


def _job_sets(args, entry: Entry, seed: int, out: Path, underived: bool = False) -> list[str] | None:
    """Every ``--set`` of one run: the comparison's, the row's and a control's derived ones;
    ``None`` for a control that cannot be derived yet (``underived``: without them instead)."""
    try:
        return _train_sets(args, seed, entry, _derived(args, entry, seed, out))
    except NotDerivable:
        return _train_sets(args, seed, entry) if underived else None


def _derived(args, entry: Entry, seed: int, out: Path) -> list[str]:
    if entry.control is None:
        return []
    from explorl.config import load_config
    source = next(e for e in args._entries if e.label == entry.control["of"])
    return derived_sets(entry, out, seed, load_config(args.config, _train_sets(args, seed, source), source.spec))


def _ready_sets(args, entry: Entry, seed: int, out: Path, run_dir: Path) -> list[str]:
    """A pending run's sets, derived now for a control (whose folder is then checked against
    them); ``NotDerivable`` when it cannot run."""
    sets = _train_sets(args, seed, entry, _derived(args, entry, seed, out))
    if entry.control is not None:
        _check_same_config(args, entry.spec, sets, run_dir)
    return sets


def _check_args(args) -> list[Entry]:
    """Validate everything that can be checked before any training; returns the rows to run:
    the recipes, each recipe's second warm start (``args.second_warm_start``) and the controls
    (``args.controls``), also kept as ``args._entries``."""
    from explorl.config import load_config, parse_override
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if getattr(args, "jobs", 1) < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.tokens < 1:
        raise ValueError(f"--tokens must be >= 1 (generated tokens per run), got {args.tokens}")
    if args.eval_every_tokens is not None and args.eval_every_tokens < 1:
        raise ValueError(f"--eval-every-tokens must be >= 1, got {args.eval_every_tokens}")
    for item in args.overrides:
        key = ".".join(parse_override(item)[0])
        if key in RESERVED_SETS:
            raise ValueError(f"--set {item!r}: {key} is set by compare ({RESERVED_SETS[key]})")
    entries = planned_entries(args)
    args._entries = entries
    for entry in entries:
        try:  # the whole config and its plug-ins, so a bad recipe fails now rather than mid-study
            from explorl.train.plugins import Plugins
            cfg = load_config(args.config, _train_sets(args, 0, entry), entry.spec)
            Plugins.from_config(cfg)
            _check_declared(args, cfg)
        except ValueError as err:
            raise ValueError(f"recipe {entry.label!r}: {err}") from None
    return entries


def planned_entries(args) -> list[Entry]:
    """The rows a comparison declares, each with its seeds: the recipes, their second warm start
    and the controls (names checked; the configs are checked by ``_check_args``)."""
    from explorl.config import recipe_path
    names = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if not names:
        raise ValueError("--recipes: give at least one recipe, e.g. --recipes grpo,clip_higher")
    per_recipe = getattr(args, "seeds_per_recipe", None) or {}
    entries, seen = [], {}
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
        entries.append(Entry(label, name, list(range(per_recipe.get(label, args.seeds)))))
    unknown = sorted(set(per_recipe) - set(seen))
    if unknown:
        raise ValueError(f"seeds_per_recipe: {', '.join(unknown)} not among the recipes ({', '.join(seen)})")
    return entries + _warm_start_entries(args, entries) + _control_entries(args, entries)


def _check_declared(args, cfg) -> None:
    """The evaluation a study declared for its regime (``k_max``, ``heldout_problems``)."""
    k_max, problems = getattr(args, "k_max", None), getattr(args, "heldout_problems", None)
    if k_max is not None and cfg.eval.samples < 2 * k_max:
        raise ValueError(f"k_max {k_max} is declared, so eval.samples must be >= 2·k_max = {2 * k_max}, "
                         f"got {cfg.eval.samples}")
    held_out = cfg.eval.problems_per_source * len(cfg.tasks)
    if problems is not None and held_out < problems:
        raise ValueError(f"heldout_problems {problems} is declared, but eval.problems_per_source "
                         f"{cfg.eval.problems_per_source} x {len(cfg.tasks)} source(s) = {held_out} held-out problems")


def _warm_start_entries(args, entries: list[Entry]) -> list[Entry]:
    """``args.second_warm_start`` (``{seed, recipes}``): those recipes and GRPO again, from the
    warm start of ``model.warmup.seed = seed``, in ``runs/<label>@warm<seed>``."""
    second = getattr(args, "second_warm_start", None)
    if not second:
        return []
    labels = {e.label: e for e in entries}
    wanted = list(dict.fromkeys(["grpo", *second["recipes"]]))
    missing = [lb for lb in wanted if lb not in labels]
    if missing:
        raise ValueError(f"second_warm_start: {', '.join(missing)} not among the recipes ({', '.join(labels)})")
    seed = second["seed"]
    return [Entry(f"{lb}@warm{seed}", labels[lb].spec, list(labels[lb].seeds), [f"model.warmup.seed={seed}"],
                  warm_start=seed) for lb in wanted]


def _control_entries(args, entries: list[Entry]) -> list[Entry]:
    """``args.controls`` (``{label: {recipe, match, of}}``) as rows with their controlled row's seeds."""
    from explorl.config import recipe_path
    out = []
    labels = {e.label: e for e in entries}
    for label, c in (getattr(args, "controls", None) or {}).items():
        if label in labels:
            raise ValueError(f"controls.{label}: the label is already a recipe's run folder; rename it")
        if c["of"] not in labels:
            raise ValueError(f"controls.{label}: of {c['of']!r} is not among the recipes ({', '.join(labels)})")
        if c["match"] not in MATCHES:
            raise ValueError(f"controls.{label}: match must be one of {', '.join(MATCHES)}, got {c['match']!r}")
        recipe_path(c["recipe"])
        entry = Entry(label, c["recipe"], list(labels[c["of"]].seeds), control={"of": c["of"], "match": c["match"]})
        if c["match"] == "teacher_tokens":
            sft_phase_guidance(entry, 1)  # the recipe has an SFT phase to size
        out.append(entry)
    return out


def _warm_start(args, pending: list[tuple[str, list[str]]]) -> None:
    """Warm-start the testbed model(s) the pending runs share, here and once, so that no run's
    wall time includes it (a recipe may change the model or tasks, hence one check per recipe;
    the warm starts of a soup reference's members too)."""
    from explorl.config import load_config
    from explorl.policy.reference import member_config
    from explorl.policy.warmup import warm_model_dir, warmup
    done = set()
    for spec, sets in pending:
        cfg = load_config(args.config, sets, spec)
        members = [member_config(cfg, m["warmup_seed"]) for m in cfg.reference.get("models", [])
                   if "warmup_seed" in m]
        for each in ([] if cfg.model.path else [cfg]) + members:
            if warm_model_dir(each) in done:
                continue
            done.add(warm_model_dir(each))
            if not warm_model_dir(each).exists():
                print(f"warm start of the testbed model ({each.model.warmup.steps} steps, shared by the runs, "
                      f"not counted in their time) ... ", end="", flush=True)
                start = time.perf_counter()
                warmup(each, log=lambda *_: None)
                print(f"{time.perf_counter() - start:.1f} s", flush=True)
    _shared_start_evaluations(args, pending)


def _shared_start_evaluations(args, pending: list[tuple[str, list[str]]]) -> None:
    """Compute, here and once, each start evaluation the pending runs share (``eval.shared``),
    so that no run's wall time includes it and no two runs compute it."""
    import tempfile

    from explorl.config import load_config
    from explorl.eval.shared import load_start_eval, start_eval_path
    from explorl.train.loop import Trainer
    done = set()
    for spec, sets in pending:
        cfg = load_config(args.config, sets, spec)
        path = start_eval_path(cfg)
        if path is None or path in done:
            continue
        done.add(path)
        if load_start_eval(cfg, _warn) is not None:
            continue
        print("start evaluation (shared by the runs that start from the same model, not counted in their "
              "time) ... ", end="", flush=True)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="explorl-start-eval-") as tmp:
            trainer = Trainer(cfg, Path(tmp) / "run", progress=False, log=lambda *_: None)
            try:
                trainer._start_evaluation()
            finally:
                trainer.close()
        print(f"{time.perf_counter() - start:.1f} s", flush=True)


def _check_same_config(args, spec: str, sets: list[str], run_dir: Path) -> None:
    """A run folder that will be skipped or resumed must hold the configuration asked for now."""
    import yaml
    from explorl.config import load_config
    if run_state(run_dir) == "fresh" or not (run_dir / "config.yaml").exists():
        return
    wanted = json.loads(json.dumps(load_config(args.config, sets, spec).to_dict()))
    want = _flat(wanted)
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{run_dir / 'config.yaml'} does not parse ({' '.join(str(err).split())}), so this run "
                         f"cannot be checked against the configuration asked for; move it aside to resume "
                         f"the run anyway, or delete {run_dir} to redo it") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{run_dir / 'config.yaml'} does not hold a configuration; move it aside to resume "
                         f"the run anyway, or delete {run_dir} to redo it")
    from explorl.train.resume import differences
    have = _flat(json.loads(json.dumps(saved)))
    diff = differences(saved, wanted)  # a key added to explorl since, at its default, is no difference
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


def _train_sets(args, seed: int, entry: Entry | None = None, derived: list[str] = ()) -> list[str]:
    """The ``--set`` items of one run: the comparison's, the seed and the budget, then the row's
    own (a second warm start) and a control's derived ones, which win."""
    sets = [*args.overrides, f"seed={seed}", f"train.max_tokens={args.tokens}", f"train.steps={NEVER_BINDING_STEPS}"]
    sets += [f"eval.every_tokens={args.eval_every_tokens}"] if args.eval_every_tokens else []
    return sets + (list(entry.sets) if entry else []) + list(derived)


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
    from explorl.folder_lock import FolderLock, FolderLocked
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


def _run_parallel(args, todo, finished, blocked, out: Path) -> None:
    """Run the pending runs ``args.jobs`` at a time, each child with its share of the cores as
    torch threads (unless ``OMP_NUM_THREADS`` is set); a control starts once the run it derives
    from has finished. Ctrl-C stops every running child."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // args.jobs))
    print(f"compare: {args.jobs} runs at a time, {threads} torch thread(s) each (wall times then include "
          f"the contention between them)", flush=True)
    queue, running = list(todo), {}

    def source_pending(entry, seed) -> bool:  # the run a control derives from is still running or queued
        of = entry.control["of"]
        return (any(lb == of and sd == seed for _, lb, sd, _, _ in running.values())
                or any(e.label == of and sd == seed for _, e, sd, _, _ in queue))

    try:
        while queue or running:
            i = 0
            while i < len(queue) and len(running) < args.jobs:
                head, entry, seed, run_dir, state = queue[i]
                try:
                    sets = _ready_sets(args, entry, seed, out, run_dir)
                except NotDerivable as why:
                    if not why.final and source_pending(entry, seed):
                        i += 1  # waits for its source
                    else:
                        queue.pop(i)
                        blocked(head, entry, seed, why)
                    continue
                queue.pop(i)
                print(f"{head}: {'resume' if state == 'resume' else 'train'} (started)", flush=True)
                proc, log = _start_child(args, entry.spec, sets, run_dir, state == "resume", threads)
                running[proc] = (head, entry.label, seed, run_dir, log)
            for proc in [p for p in running if p.poll() is not None]:
                head, label, seed, run_dir, log = running.pop(proc)
                log.close()
                finished(head, label, seed, run_dir, proc.returncode, same_line=False)
            time.sleep(0.2)
    except BaseException:
        for proc, (*_, log) in running.items():
            _stop(proc)
            log.close()
        raise


def _launch(args, spec: str, sets: list[str], run_dir: Path, resume: bool) -> int:
    """Run one child to its end and return its exit status (negative: killed by that signal).
    Ctrl-C (or any error) here stops the child before it propagates."""
    proc, log = _start_child(args, spec, sets, run_dir, resume)
    try:
        return proc.wait()
    except BaseException:
        _stop(proc)
        raise
    finally:
        log.close()


def _start_child(args, spec: str, sets: list[str], run_dir: Path, resume: bool, threads: str | None = None):
    """Start one run's child process (its ``--set`` items ``sets``); returns it and its open log file."""
    _wait_for_writer(run_dir)
    if not resume and run_dir.exists():  # a stale folder without a checkpoint: start over
        _start_over(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", CHILD_CODE, "--out", str(run_dir), "--recipe", spec]
    if args.config:
        cmd += ["--config", str(args.config)]
    for item in sets:
        cmd += ["--set", item]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the checkout holding this explorl package
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env[PARENT_ENV] = str(os.getpid())
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    log = (run_dir / "train.log").open("a")
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log
    except BaseException:
        log.close()
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
