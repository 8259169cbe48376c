"""Peak memory of a stretch of work, for benchmarks that run two sides in one process.

On a CUDA device it is ``torch.cuda``'s peak allocation. On the CPU it is the process's peak
resident set (``VmHWM``), reset before the stretch by writing ``5`` to ``/proc/self/clear_refs``
(Linux 4.0 and later); both sides' weights stay resident, so the figure that compares them is
the **rise**: the peak during the stretch minus the resident set when it began (activations,
caches, gradients and optimizer state it allocated). Where the peak cannot be reset, nothing is
reported, never a number that covers the wrong stretch.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_mb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with tracker.measure(name): ...`` records, per name, the largest peak and the largest
    rise over the memory in use at the start, in MiB; ``row(name)`` formats them."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak: dict[str, float] = {}
        self.rise: dict[str, float] = {}
        self.unavailable = None

    @contextlib.contextmanager
    def measure(self, name: str):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            start = _status_mb("VmRSS") if _reset_cpu_peak() else None
            if start is None:
                self.unavailable = "the process's peak resident set cannot be reset here (/proc/self/clear_refs)"
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
                peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            else:
                peak = _status_mb("VmHWM") if start is not None else None
            if peak is not None and start is not None:
                self.peak[name] = max(self.peak.get(name, 0.0), peak)
                self.rise[name] = max(self.rise.get(name, 0.0), peak - start)

    def row(self, name: str) -> tuple[str, str]:
        if name not in self.peak:
            return "-", "-"
        return f"{self.peak[name]:.0f}", f"{self.rise[name]:.0f}"

    def legend(self) -> str:
        what = ("peak GPU memory allocated" if self.device.type == "cuda"
                else "peak resident set of the process (both sides' weights included)")
        note = f"; not measured: {self.unavailable}" if self.unavailable else ""
        return (f"peak MiB: {what} during that side's timed runs; rise MiB: that peak minus the memory in use "
                f"when the run began (what the side itself allocated){note}")
