"""Sequence manipulation: sort digits (``"sort:52913="`` -> ``"12359"``) and reverse
letters (``"rev:abcde="`` -> ``"edcba"``)."""
from __future__ import annotations

import random
import string

from .arithmetic import exact_match
from .problem import TaskSource


class Sorting(TaskSource):
    """Sort ``length`` random decimal digits (repeats allowed) in ascending order."""

    name = "sorting"
    param_ranges = {"length": (2, 8)}

    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        digits = [rng.choice(string.digits) for _ in range(max(1, int(params["length"])))]
        return f"sort:{''.join(digits)}=", "".join(sorted(digits))

    score = staticmethod(exact_match)


class Reversal(TaskSource):
    """Reverse ``length`` random lowercase letters."""

    name = "reversal"
    param_ranges = {"length": (2, 10)}

    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        letters = "".join(rng.choice(string.ascii_lowercase) for _ in range(max(1, int(params["length"]))))
        return f"rev:{letters}=", letters[::-1]

    score = staticmethod(exact_match)
