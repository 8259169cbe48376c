"""Static-shape decoding (``explorl.policy.static_decode``, what CUDA graphs replay): run eagerly on
the CPU, it samples exactly what the fast path samples under the same noise, through row drops,
padded row buckets and buffers reused by a rollout of another prompt width; ``model.cuda_graphs``
is validated. The captured graphs themselves are checked in ``tests/test_gpu.py``."""
import pytest
import torch

from explorl.policy import fastlm, static_decode
from explorl.policy.engine import RolloutEngine
from explorl.policy.static_decode import StaticDecoder, bucket_for, row_buckets
from explorl.tasks import Problem


def problems(prompts):
    return [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(prompts)]


def engines(model, tok):
    today = RolloutEngine(model, tok, "fast", cuda_graphs=False)
    static = RolloutEngine(model, tok, "fast", cuda_graphs=False)
    static.backend = StaticDecoder(fastlm.FastLM(model), capture=False)
    # every third token ends a response: rows finish at different steps and are dropped
    stops = torch.arange(0, len(tok), 3)
    today.stop_ids = static.stop_ids = stops
    return today, static


def assert_same_samples(a, b):
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.equal(a.mask, b.mask)
    for key in ("behaviour_logp", "old_logp", "entropy"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key), rtol=1e-5, atol=1e-5)


def test_static_shapes_sample_what_the_fast_path_samples(tiny_model, monkeypatch):
    model, tok = tiny_model
    today, static = engines(model, tok)
    steps = []  # (live rows, the bucket the step ran at)
    monkeypatch.setattr(static_decode, "bucket_for", lambda n, cap: steps.append((n, bucket_for(n, cap))) or steps[-1][1])
    kept = []
    real_keep = StaticDecoder.keep_rows
    monkeypatch.setattr(StaticDecoder, "keep_rows", lambda self, state, rows: kept.append(len(rows))
                        or real_keep(self, state, rows))

    first = problems(["12+3=", "9=", "sort:5432=", "rev:ab="])
    counts = [3, 1, 2, 1]  # 7 rows: the first step runs the bucket of 7 (the buffer's row count)
    noise = torch.rand(7, 12, generator=torch.Generator().manual_seed(0))
    a = today.rollout(first, counts, [1.0] * 12, noise=noise)
    b = static.rollout(first, counts, [1.0] * 12, noise=noise)
    assert_same_samples(a, b)
    assert kept and steps[0][1] == 7  # rows were dropped; steps ran at padded buckets
    assert any(n < bucket for n, bucket in steps) and len({bucket for _, bucket in steps}) >= 2
    buffers = static.backend.buffers

    # a second rollout: narrower prompts, fewer rows, the same buffers (stale entries masked out)
    second = problems(["1+1=", "rev:abcd="])
    noise = torch.rand(5, 12, generator=torch.Generator().manual_seed(1))
    steps.clear()
    a = today.rollout(second, [2, 3], [0.7] * 12, top_p=0.9, noise=noise)
    b = static.rollout(second, [2, 3], [0.7] * 12, top_p=0.9, noise=noise)
    assert_same_samples(a, b)
    assert static.backend.buffers is buffers and steps  # the buffers of 7 rows, reused
    assert a.mask.sum(1).min() < a.mask.sum(1).max()  # responses of different lengths


def test_row_buckets():
    assert row_buckets(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert row_buckets(8) == [1, 2, 4, 8]
    assert [bucket_for(n, 100) for n in (1, 3, 64, 65, 100)] == [1, 4, 64, 100, 100]


def test_cuda_graphs_setting_is_validated(tiny_model, tiny_config):
    from explorl.config import validate
    model, tok = tiny_model
    with pytest.raises(ValueError, match=r"model.cuda_graphs: expected auto, true or false, got 'sometimes'"):
        validate(tiny_config(model={"cuda_graphs": "sometimes"}))
    with pytest.raises(ValueError, match=r"model.cuda_graphs: true replays decoding steps on a GPU; "
                                         r"model.device: cpu cannot"):
        validate(tiny_config(model={"cuda_graphs": True, "device": "cpu"}))
    with pytest.raises(ValueError, match=r"model.cuda_graphs: true needs the built-in fast path .*model.backend: hf"):
        validate(tiny_config(model={"cuda_graphs": True, "backend": "hf"}))
    for setting in ("auto", True, False):
        validate(tiny_config(model={"cuda_graphs": setting}))
    with pytest.raises(ValueError, match=r"model.cuda_graphs: true needs the policy on a CUDA device; it is on cpu"):
        RolloutEngine(model, tok, cuda_graphs=True)
    assert isinstance(RolloutEngine(model, tok, cuda_graphs="auto").backend, fastlm.FastLM)  # CPU: today's path
