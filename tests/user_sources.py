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
