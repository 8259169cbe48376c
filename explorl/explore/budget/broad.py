"""BroRL: broaden exploration with many rollouts per problem, sampled in bounded chunks.

Hu et al., "BroRL: Scaling Reinforcement Learning via Broadened Exploration",
arXiv:2510.01180 (no code found; N in the hundreds, 512 per a third-party summary). The loss
is unchanged; only N grows. With large N the unsampled-token term of the one-step update
shrinks, so the probability mass on correct tokens grows monotonically, and fewer groups
are all-correct or all-wrong.

Every problem gets ``n`` rollouts, regardless of ``total`` (the run's nominal
problems × rollouts budget): the compute grows with N, which is the method; the token count
the trainer logs (and ``train.max_tokens``) charges it. Generation is split into sampling
calls of at most ``chunk_rollouts`` rows, so peak generation memory is that of a
``chunk_rollouts``-row batch whatever N is. A problem's rollouts may span chunks; the
chunks are merged back so that every problem has one whole group of ``n``.

Scaled to the testbed (choice): ``n`` = 64 (the paper's hundreds on 8k-token responses);
``chunk_rollouts`` = 256, the rows of one default testbed step (32 × 8).
"""
from __future__ import annotations

from explorl.batch import merge
from explorl.explore.acted import Acted
from explorl.explore.base import Budget
from explorl.registry import register


def plan_chunks(counts: list[int], chunk: int) -> list[list[tuple[int, int]]]:
    """Split ``counts[i]`` rollouts of each problem i into calls of at most ``chunk`` rows:
    a list of calls, each a list of ``(problem index, rollouts)``."""
    calls, current, room = [], [], chunk
    for i, c in enumerate(counts):
        while c > 0:
            take = min(c, room)
            current.append((i, take))
            c, room = c - take, room - take
            if room == 0:
                calls.append(current)
                current, room = [], chunk
    if current:
        calls.append(current)
    return calls


@register("budget", "broad", paper="BroRL, Hu et al., arXiv:2510.01180")
class Broad(Budget):
    engaged_when = (Acted("budget/rollouts_per_problem", ">=", 64, reduce="min",
                          what="64 rollouts per problem drawn"),)
    def __init__(self, n: int = 64, chunk_rollouts: int = 256):
        if n < 1 or chunk_rollouts < 1:
            raise ValueError(f"budget broad: need n >= 1 and chunk_rollouts >= 1, got {n}, {chunk_rollouts}")
        self.n, self.chunk_rollouts = n, chunk_rollouts

    def fewest_rollouts(self, rollouts_per_problem):
        return self.n

    def allocate(self, problems, total):
        return [self.n] * len(problems), {"budget/rollouts": float(self.n * len(problems)),
                                          "budget/rollouts_per_problem": float(self.n)}

    def collect(self, sample, problems, counts, draw=None):
        return chunked_sample(sample, problems, counts, self.chunk_rollouts)


def chunked_sample(sample, problems, counts, chunk: int):
    """``sample`` in calls of at most ``chunk`` rows; one whole group per problem returned."""
    calls = plan_chunks(list(counts), chunk)
    if len(calls) == 1:
        return sample(list(problems), list(counts))
    pieces = []
    for call in calls:
        batch = sample([problems[i] for i, _ in call], [c for _, c in call])
        pieces.append((batch, [i for i, _ in call]))
    return merge(pieces, problems)
