"""Named crash points, for proving that a kill at the worst moment loses nothing.

``crash_point(name)`` does nothing unless the environment variable ``EXPLORL_CRASH_AT`` names
it (``name`` or ``name:N`` for its N-th hit in this process); then the process kills itself
with SIGKILL right there, as a power cut or an out-of-memory kill would. ``explorl crashtest``
uses it to land kills inside checkpoint, eval and metrics writes, besides its kills at random
moments. The names are listed in ``CRASH_POINTS``.
"""
from __future__ import annotations

import os
import signal

CRASH_POINTS = (
    "checkpoint.model_written",   # model saved into the temporary folder, trainer.pt not yet
    "checkpoint.state_written",   # trainer.pt written, no manifest yet
    "checkpoint.renamed",         # the folder renamed into place, ckpt/latest not yet updated
    "eval.start_computed",        # the start-of-run evaluation done, eval.json not yet written
    "eval.end_computed",          # the end-of-run evaluation done, eval.json not yet written
    "metrics.logged",             # a metrics line appended, the step's checkpoint not yet written
    "config.written",             # config.yaml written, nothing else yet
)
_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("EXPLORL_CRASH_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
