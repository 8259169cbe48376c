"""``self``: an archive of the policy's own successes, per problem, as a teacher.

After every step it keeps the distinct correct on-policy responses of each problem (up to
``per_problem``, newest first; ``max_problems`` problems, the least recently solved dropped).
``solutions(problem, n)`` returns those of the same problem id; a problem never solved has none.
"""
from __future__ import annotations

from explorl.batch import ON_POLICY
from explorl.registry import register
from explorl.teachers import Teacher


@register("teacher", "self", paper="an archive of the policy's own correct responses")
class Archive(Teacher):
    state_keys = ("archive",)

    def __init__(self, per_problem: int = 4, max_problems: int = 4096):
        if per_problem < 1 or max_problems < 1:
            raise ValueError("teacher self: per_problem and max_problems must be >= 1")
        self.per_problem, self.max_problems = per_problem, max_problems
        self.archive: dict[str, list[str]] = {}

    def solutions(self, problem, n, ctx=None):
        return list(self.archive.get(problem.id, []))[:n]

    def observe(self, stats):
        batch = stats.extras.get("batch")
        if batch is None:
            return {}
        kinds = batch.row_kind.tolist()
        for r, (g, reward) in enumerate(zip(batch.group.tolist(), batch.rewards.tolist())):
            problem = batch.problems[g]
            if kinds[r] != ON_POLICY or reward < 1.0 or problem.prefix:
                continue
            kept = [t for t in self.archive.pop(problem.id, []) if t != batch.texts[r]]
            self.archive[problem.id] = ([batch.texts[r]] + kept)[: self.per_problem]
        while len(self.archive) > self.max_problems:
            self.archive.pop(next(iter(self.archive)))
        return {"teacher/self_archive_problems": float(len(self.archive))}
