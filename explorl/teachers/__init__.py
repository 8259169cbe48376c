"""Teachers: where outside solutions come from, named in the ``teachers:`` section.

Each entry is ``name: {kind: <registered teacher>, <options>}`` and gives a guidance method a
source of solutions, ``solutions(problem, n, ctx) -> list[str]`` (up to ``n`` distinct ones,
possibly none). Kinds: ``solver`` (procedural solvers for the testbed sources, with different
solution styles where a source allows them), ``reference`` (a data file's solution field, or
the problem's reference answer), ``model`` (a saved model folder sampled by the engine; its
correct samples) and ``self`` (an archive of the policy's own successes). Teachers are
registered plug-ins (``explorl list --level teacher``); their state is checkpointed.
"""
from __future__ import annotations

from explorl.explore.base import Component
from explorl.registry import build


class Teacher(Component):
    """A source of solutions. ``solutions`` may use ``ctx`` (``TeacherContext``) to verify
    candidates and to count the tokens a model teacher generates."""

    def bind(self, tasks, engine, verify) -> None:
        """Called once by the trainer with the task mix, the policy's engine and the verifier."""

    def solutions(self, problem, n: int, ctx=None) -> list[str]:
        raise NotImplementedError


def build_teachers(spec: dict | None) -> dict[str, Teacher]:
    """``{name: Teacher}`` from the ``teachers:`` section."""
    out = {}
    for name, options in (spec or {}).items():
        if not isinstance(options, dict) or "kind" not in options:
            raise ValueError(f"teachers.{name}: expected a mapping with a 'kind' (solver, reference, model or self), "
                             f"got {options!r}")
        options = dict(options)
        teacher = build("teacher", {"name": options.pop("kind"), **options}, f"teachers.{name}")
        teacher.teacher_name = name
        out[name] = teacher
    return out


from explorl.teachers import archive, model, reference, solver  # noqa: E402,F401  (register the kinds)
