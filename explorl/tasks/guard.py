"""Verification under guard: a time limit, an exception guard, and every fault counted.

``GuardedVerifier.score(problems, completions)`` returns the rewards and the faults. By default
(``isolate=True``) the verifiers run in a worker process: a verifier that hangs past
``timeout`` seconds (even inside C code) is abandoned by killing the worker, its completion is
scored 0 and counted as a time-out, and a fresh worker carries on with the rest; a worker that
dies (a crashing extension) costs that one completion, counted as an error. With
``isolate=False`` verifiers run in this process and the limit is a SIGALRM timer, which can
only interrupt Python code, and only on the main thread.

A fault is one of ``error`` (the verifier raised), ``timeout`` or ``invalid`` (a reward that
is not a number in [0, 1], NaN included); each scores 0. The caller decides what a share of
faults means (the trainer stops past ``verify.max_error_share``).
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time
from dataclasses import dataclass

from explorl.errors import RunStopped

CHUNK = 256          # results per message from the worker
FLUSH_S = 0.05       # ... or sooner, when that much time has passed


@dataclass
class Fault:
    kind: str          # "error" | "timeout" | "invalid"
    source: str
    problem_id: str
    completion: str
    detail: str

    def describe(self, chars: int = 120) -> str:
        shown = repr(self.completion[:chars]) + ("..." if len(self.completion) > chars else "")
        return f"{self.kind} in source {self.source!r} on problem {self.problem_id}: {self.detail}; completion {shown}"


class VerificationFailed(RunStopped):
    """Too many verifications failed; the message names the source and an offending completion."""


def _classify(tasks, problem, completion):
    """``(reward, kind, detail)`` of one verification in this process (no time limit)."""
    from explorl.tasks.problem import InvalidReward
    try:
        return tasks._source(problem.source).verify(problem, completion), None, None
    except InvalidReward as err:
        return 0.0, "invalid", str(err)
    except Exception as err:  # any verifier bug is counted, never hidden
        return 0.0, "error", f"{type(err).__name__}: {err}"


def _worker(conn, tasks, progress) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "score":
            out, last = [], time.monotonic()
            for j, (problem, completion) in enumerate(msg[1]):
                progress[1] = time.monotonic()
                progress[0] = j
                out.append(_classify(tasks, problem, completion))
                if len(out) >= CHUNK or time.monotonic() - last > FLUSH_S:
                    conn.send(("part", out))
                    out, last = [], time.monotonic()
            progress[0] = -1
            conn.send(("done", out))
        elif msg[0] == "check":
            from explorl.tasks.checker import check_task
            try:
                conn.send(("ok", check_task(tasks.sources[msg[1]], n=msg[2], alphabet="")))
            except AssertionError as err:
                conn.send(("failed", str(err)))
            except Exception as err:
                conn.send(("failed", f"check_task raised {type(err).__name__}: {err}"))


class GuardedVerifier:
    def __init__(self, tasks, timeout: float = 5.0, isolate: bool = True):
        self._proc = self._conn = self._progress = None  # first: __del__ runs even if __init__ raises
        if not timeout > 0:
            raise ValueError(f"verify.timeout must be > 0 seconds, got {timeout}")
        self.tasks, self.timeout, self.isolate = tasks, float(timeout), isolate
        self.restarts = 0

    # ---- the worker -----------------------------------------------------------------------
    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self._progress = ctx.Array("d", [-1.0, 0.0], lock=False)
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker, args=(child, self.tasks, self._progress), daemon=True,
                                 name="explorl-verifier")
        try:
            self._proc.start()
        except Exception as err:  # e.g. a source that cannot be pickled
            self._proc = None
            raise ValueError(f"verify: could not start the verifier process ({type(err).__name__}: {err}); "
                             f"task sources must be picklable, or set verify.isolate: false") from None
        child.close()

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
            self._conn.close()
        self._proc = self._conn = None
        self.restarts += 1

    def close(self) -> None:
        if self._proc is not None:
            self._conn.close()
            self._proc.join(1)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(1)
        self._proc = self._conn = None

    def __del__(self):  # pragma: no cover - a verifier nobody closed; Python reports an error raised here
        self.close()

    def _current(self) -> tuple[int, float]:
        """(index being verified, when it started); re-read until consistent."""
        while True:
            j, t0, j2 = int(self._progress[0]), self._progress[1], int(self._progress[0])
            if j == j2:
                return j, t0

    # ---- scoring --------------------------------------------------------------------------
    def score(self, problems: list, completions: list[str]) -> tuple[list[float], list[Fault]]:
        if len(problems) != len(completions):
            raise ValueError(f"verify: {len(problems)} problems for {len(completions)} completions")
        if not self.isolate:
            return self._score_here(problems, completions)
        results: list = [None] * len(completions)
        pending = list(range(len(completions)))
        while pending:
            pending = self._score_batch(problems, completions, pending, results)
        rewards, faults = [], []
        for i, (reward, kind, detail) in enumerate(results):
            rewards.append(reward)
            if kind is not None:
                faults.append(Fault(kind, problems[i].source, problems[i].id, completions[i], detail))
        return rewards, faults

    def _score_batch(self, problems, completions, pending, results) -> list[int]:
        """Send ``pending`` to the worker and collect results; on a hang or a dead worker, record
        that completion's fault and return the indices still to do."""
        if self._proc is None or not self._proc.is_alive():
            if self._proc is not None:
                self._kill()
            self._start()
        self._conn.send(("score", [(problems[i], completions[i]) for i in pending]))
        received = 0
        while True:
            j, started = self._current()
            wait = self.timeout - (time.monotonic() - started) if j >= received else self.timeout
            try:
                ready = self._conn.poll(max(wait, 0.001))
                msg = self._conn.recv() if ready else None
            except (EOFError, OSError):
                self._proc.join(2)
                code = self._proc.exitcode
                self._kill()
                return self._give_up(pending, received, results, "error",
                                     f"the verifier process died (exit code {code})")
            if msg is not None:
                for r in msg[1]:
                    results[pending[received]] = r
                    received += 1
                if msg[0] == "done":
                    return []
                continue
            j2, started2 = self._current()
            if j2 == j and j >= received and time.monotonic() - started2 >= self.timeout:
                self._kill()
                return self._give_up(pending, received, results, "timeout",
                                     f"no result within verify.timeout={self.timeout:g} s")

    def _give_up(self, pending, received, results, kind, detail) -> list[int]:
        """The item the worker was on when it hung or died scores 0 with a fault; the items it
        had finished but not yet sent are redone."""
        j, _ = self._current()
        if j < 0:  # it had finished every item and died sending the last results: redo those
            return pending[received:]
        j = max(j, received)
        results[pending[j]] = (0.0, kind, detail)
        return pending[received:j] + pending[j + 1:]

    def _score_here(self, problems, completions):
        rewards, faults = [], []
        use_alarm = threading.current_thread() is threading.main_thread()
        for problem, completion in zip(problems, completions):
            try:
                if use_alarm:
                    previous = signal.signal(signal.SIGALRM, _on_alarm)
                    signal.setitimer(signal.ITIMER_REAL, self.timeout)
                try:
                    reward, kind, detail = _classify(self.tasks, problem, completion)
                finally:
                    if use_alarm:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                        signal.signal(signal.SIGALRM, previous)
            except _Alarm:
                reward, kind, detail = 0.0, "timeout", f"no result within verify.timeout={self.timeout:g} s"
            rewards.append(reward)
            if kind is not None:
                faults.append(Fault(kind, problem.source, problem.id, completion, detail))
        return rewards, faults

    # ---- the start-of-run check -------------------------------------------------------------
    def check_sources(self, n: int = 3, limit_s: float = 120.0) -> dict[str, dict]:
        """A quick ``check_task`` of every source, in the worker (a hang cannot stall the start).
        Raises ``ValueError`` naming the source that fails."""
        return {name: self.check_source(name, n, limit_s) for name in self.tasks.sources}

    def check_source(self, name: str, n: int = 3, limit_s: float = 120.0) -> dict:
        """``check_task`` of source ``name`` (in the worker unless ``isolate`` is off): its report,
        or ``ValueError`` naming the source and what failed."""
        from explorl.tasks.checker import check_task
        if not self.isolate:
            try:
                return check_task(self.tasks.sources[name], n=n, alphabet="")
            except AssertionError as err:
                raise ValueError(f"task source {name!r} fails its checks: {err}") from None
        if self._proc is None or not self._proc.is_alive():
            self._start()
        self._conn.send(("check", name, n))
        try:
            ready = self._conn.poll(limit_s)
            status, payload = self._conn.recv() if ready else ("failed", None)
        except (EOFError, OSError):
            self._kill()
            raise ValueError(f"task source {name!r}: the verifier process died during its check (when explorl runs "
                             f"from a script of yours, put the script's code under if __name__ == '__main__': — the "
                             f"verifier process imports it)") from None
        if payload is None:
            self._kill()
            raise ValueError(f"task source {name!r}: its checks did not finish within {limit_s:g} s "
                             f"(a verifier that hangs?)")
        if status != "ok":
            raise ValueError(f"task source {name!r} fails its checks: {payload}")
        return payload


class _Alarm(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Alarm()


class FaultLedger:
    """Fault counts of one step (or one evaluation) per source, the first few logged in full, and
    the error budget: past ``max_share`` of the verifications, ``check`` raises."""

    KINDS = ("error", "timeout", "invalid")

    def __init__(self, sources, max_share: float, log_first: int, log=print, logged: list | None = None):
        self.sources, self.max_share, self.log_first, self.log = list(sources), max_share, log_first, log
        self.counts = {(k, s): 0 for k in self.KINDS for s in self.sources}
        self.total = 0
        self.first: Fault | None = None
        self.logged = logged if logged is not None else [0]  # shared across ledgers of a run

    def add(self, n_verified: int, faults: list[Fault]) -> None:
        self.total += n_verified
        for fault in faults:
            self.counts[(fault.kind, fault.source)] = self.counts.get((fault.kind, fault.source), 0) + 1
            self.first = self.first or fault
            if self.logged[0] < self.log_first:
                self.logged[0] += 1
                self.log(f"verify: {fault.describe()}")

    @property
    def faults(self) -> int:
        return sum(self.counts.values())

    def metrics(self) -> dict[str, int]:
        names = {"error": "errors", "timeout": "timeouts", "invalid": "invalid"}
        return {f"verify/{names[k]}/{s}": n for (k, s), n in self.counts.items()}

    def check(self, what: str = "this step") -> None:
        if self.total and self.faults / self.total > self.max_share:
            by_source = {}
            for (kind, source), n in self.counts.items():
                by_source[source] = by_source.get(source, 0) + n
            worst = max(by_source, key=by_source.get)
            raise VerificationFailed(
                f"{self.faults} of {self.total} verifications in {what} failed "
                f"(over verify.max_error_share={self.max_share:g}); most in source {worst!r} "
                f"({by_source[worst]}); first: {self.first.describe(200)}")
