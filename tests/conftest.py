import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("EXPLORL_HOME", str(Path(__file__).resolve().parent.parent / ".cache" / "explorl"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

# A config small enough that a whole run (warm start included) takes seconds.
TINY = {
    "seed": 0,
    "recipe": "grpo",
    "model": {"tiny": {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate_size": 64},
              "warmup": {"steps": 30, "batch_size": 16}},
    "tasks": {"addition": {"digits": [1, 1]}, "reversal": {"length": [2, 3]}},
    "train": {"steps": 3, "problems_per_step": 4, "rollouts_per_problem": 4, "max_new_tokens": 6,
              "ppo_epochs": 2, "minibatches": 2, "checkpoint_every": 2},
    "eval": {"problems_per_source": 2, "samples": 4, "ks": [1, 4]},
}


@pytest.fixture
def tiny_overrides():
    """``--set`` style overrides for the tiny config."""
    def flatten(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and k != "tasks":
                yield from flatten(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}={v!r}" if isinstance(v, str) else f"{prefix}{k}={v}"
    return list(flatten(TINY))


def make_tiny_config(**sections):
    """The tiny config with ``sections`` merged in (and its recipe under them)."""
    from explorl.config import Config, _from_dict, deep_merge, load_yaml, recipe_path
    data = deep_merge(TINY, sections)
    rec = load_yaml(recipe_path(data["recipe"]))
    return _from_dict(Config, deep_merge(rec, data), "")


@pytest.fixture
def tiny_config():
    return make_tiny_config


@pytest.fixture(scope="session")
def tiny_model():
    from explorl.policy.model import build_tiny
    from explorl.tasks import ALPHABET
    return build_tiny("qwen2", ALPHABET, 32, 2, 4, 2, 64, 64, seed=0)


# Property-based tests count the examples they try; the total is printed at the end of the run.
_FUZZ_CASES = [0]


class FuzzCounter:
    def tick(self) -> None:
        _FUZZ_CASES[0] += 1

    @property
    def total(self) -> int:
        return _FUZZ_CASES[0]


@pytest.fixture(scope="session")
def fuzz_cases() -> FuzzCounter:
    """Call ``fuzz_cases.tick()`` once per generated example."""
    return FuzzCounter()


def pytest_terminal_summary(terminalreporter):
    if _FUZZ_CASES[0]:
        terminalreporter.write_line(f"fuzz cases tried: {_FUZZ_CASES[0]}")
