"""The benches' peak memory covers the stretch it names: reset before it, read after it."""
import sys

import pytest
import torch

from explorl.bench.memory import PeakMemory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU peak is read from /proc (Linux)")
def test_a_stretch_that_allocates_more_shows_a_larger_rise():
    tracker = PeakMemory(torch.device("cpu"))
    with tracker.measure("small"):
        small = torch.ones(2**18)  # 1 MiB
    with tracker.measure("large"):
        large = torch.ones(2**25)  # 128 MiB, touched
        large += 1
    del large
    with tracker.measure("after"):  # the peak was reset: the freed 128 MiB is not this stretch's
        tiny = torch.ones(16)
    assert tracker.rise["large"] >= 120
    assert tracker.rise["small"] < 60 and tracker.rise["after"] < 60
    assert tracker.peak["large"] - tracker.peak["after"] >= 100
    assert tracker.row("large")[1] == f"{tracker.rise['large']:.0f}" and tracker.row("missing") == ("-", "-")
    del small, tiny
