"""Task sources of a user's own, named in a config by import path (``kind: user_sources:Parity``)."""
import random
import zlib

from explorl.tasks import Addition, TaskSource


class Parity(TaskSource):
    """``parity:0110=`` -> ``0``: the parity of the number of ones in ``length`` random bits."""

    name = "parity"
    param_ranges = {"length": (2, 6)}

    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        bits = "".join(rng.choice("01") for _ in range(int(params["length"])))
        return f"parity:{bits}=", str(bits.count("1") % 2)

    def score(self, problem, completion: str) -> float:
        return float(completion.strip() == problem.answer)


class HangsSometimes(Addition):
    """Addition whose verifier hangs on about a fifth of the completions (picked by a hash of the
    text), in a loop in C that no alarm interrupts: only killing its process stops it."""

    name = "hangs_sometimes"

    def score(self, problem, completion: str) -> float:
        if zlib.crc32(completion.encode()) % 5 == 0:
            sum(range(10**13))
        return super().score(problem, completion)


class FailsSometimes(Addition):
    """Addition whose verifier raises on about a third of the completions and returns an
    out-of-range reward on a sixth (picked by a hash of the problem and the text)."""

    name = "fails_sometimes"

    def score(self, problem, completion: str) -> float:
        pick = zlib.crc32(f"{problem.id}:{completion}".encode()) % 6
        if pick < 2:
            raise ArithmeticError("a verifier bug")
        if pick == 2:
            return 1.5
        return super().score(problem, completion)


class FailsInTraining(FailsSometimes):
    """``FailsSometimes`` on training problems only (their seeds start at 10**9, held-out ones are
    below), so an evaluation stays within an error budget that a training step exceeds."""

    name = "fails_in_training"

    def score(self, problem, completion: str) -> float:
        if int(problem.id.rsplit("/", 1)[1]) < 10**9:
            return super(FailsSometimes, self).score(problem, completion)
        return super().score(problem, completion)
