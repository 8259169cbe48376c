"""A task source of a user's own, named in a config by import path (``kind: user_sources:Parity``)."""
import random

from explorl.tasks import TaskSource


class Parity(TaskSource):
    """``parity:0110=`` -> ``0``: the parity of the number of ones in ``length`` random bits."""

    name = "parity"
    param_ranges = {"length": (2, 6)}

    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        bits = "".join(rng.choice("01") for _ in range(int(params["length"])))
        return f"parity:{bits}=", str(bits.count("1") % 2)

    def score(self, problem, completion: str) -> float:
        return float(completion.strip() == problem.answer)
