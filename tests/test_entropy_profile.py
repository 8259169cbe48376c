"""The token-entropy profile: the share of response tokens above 0.5 nats and where they sit,
checked against hand-made responses, and `explorl entropy` end to end on a tiny warm start."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from explorl.eval.entropy_profile import ProfileCollector, format_profile, profile, token_roles
from explorl.tasks import TaskMix
from explorl.tasks.countdown_search import CountdownSearch


def test_profile_of_hand_made_responses():
    rows = [([2.0, 0.1, 0.7, 0.0], ["decision", "arithmetic", "decision", "end"]),
            ([0.6, 0.5, 0.2], ["arithmetic", "decision", "answer"])]
    p = profile(rows)
    # 7 tokens; above 0.5 (strictly): 2.0, 0.7, 0.6 -> 3 of 7; 0.5 itself is not above
    assert p["tokens"] == 7 and p["above"] == pytest.approx(3 / 7)
    assert p["mean"] == pytest.approx((2.0 + 0.1 + 0.7 + 0.0 + 0.6 + 0.5 + 0.2) / 7)
    d, a = p["roles"]["decision"], p["roles"]["arithmetic"]
    assert d == pytest.approx({"tokens": 3, "share": 3 / 7, "mean": 3.2 / 3, "above": 2 / 3, "of_above": 2 / 3})
    assert a == pytest.approx({"tokens": 2, "share": 2 / 7, "mean": 0.35, "above": 1 / 2, "of_above": 1 / 3})
    assert p["roles"]["end"]["above"] == 0 and p["roles"]["answer"]["of_above"] == 0
    assert list(p["roles"])[0] == "decision"  # the largest role first
    assert profile(rows, threshold=0.05)["above"] == pytest.approx(6 / 7)  # all but the 0.0
    text = format_profile(p)
    assert "share above 0.5 nats 0.429" in text and "decision" in text.splitlines()[2]


def test_profile_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="2 entropies for 1 roles"):
        profile([([0.1, 0.2], ["decision"])])
    with pytest.raises(ValueError, match="no response tokens"):
        profile([])


def test_token_roles_follow_the_characters_and_mark_the_stop_token():
    pieces = ["7", "-", "3", "=", "4", ";", ">", "7", ""]
    roles = token_roles(CountdownSearch(), pieces, [False] * 8 + [True])
    assert roles == ["decision", "decision", "decision", "arithmetic", "arithmetic", "control", "control",
                     "answer", "end"]
    # a token of several characters takes its first character's role; a source without roles
    assert token_roles(CountdownSearch(), ["7-", "3=4"], [False, False]) == ["decision", "decision"]
    assert token_roles(None, ["1", "2", ""], [False, False, True]) == ["response", "response", "end"]


def test_the_collector_reads_a_rollout_batch():
    from explorl.policy.tokenizer import testbed_tokenizer
    tok = testbed_tokenizer()
    mix = TaskMix.from_config({"countdown_search": {"numbers": [3, 3]}})
    problem = mix.sources["countdown_search"].problem(0)
    texts = ["7-3=4>", "5"]
    ids = [tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id] for t in texts]
    width = max(map(len, ids))
    response = torch.full((2, width), tok.pad_token_id)
    mask = torch.zeros(2, width)
    for r, row in enumerate(ids):
        response[r, :len(row)] = torch.tensor(row)
        mask[r, :len(row)] = 1
    entropy = torch.tensor([[1.5, 0.9, 0.1, 0.0, 0.0, 0.3, 0.0], [0.8, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0]]) * mask
    batch = SimpleNamespace(size=2, mask=mask, response_ids=response, entropy=entropy, group=torch.tensor([0, 0]))
    collect = ProfileCollector(mix, tok, [tok.eos_token_id])
    collect([problem], batch)
    assert collect.rows[0][0] == pytest.approx([1.5, 0.9, 0.1, 0.0, 0.0, 0.3, 0.0])
    assert collect.rows[0][1] == ["decision", "decision", "decision", "arithmetic", "arithmetic", "control", "end"]
    assert collect.rows[1][1] == ["decision", "end"]
    p = collect.profile()
    assert p["tokens"] == 9 and p["above"] == pytest.approx(4 / 9)
    assert p["roles"]["decision"]["of_above"] == pytest.approx(3 / 4)  # 1.5, 0.9, 0.8; the 0.6 is on the stop token
    assert p["roles"]["end"]["of_above"] == pytest.approx(1 / 4)


def test_entropy_command_on_a_tiny_warm_start(tmp_path, capsys):
    from explorl.cli import main
    overrides = ["model.tiny={hidden_size: 32, layers: 1, heads: 2, kv_heads: 1, intermediate_size: 64, "
                 "max_positions: 48}",
                 "model.warmup={steps: 20, batch_size: 16, references_per_problem: 4}",
                 "tasks={countdown_search: {numbers: [3, 3]}}", "train.max_new_tokens=24",
                 "eval={problems_per_source: 3, samples: 4, ks: [1, 4]}"]
    assert main(["entropy", *sum((["--set", o] for o in overrides), [])]) == 0
    out = capsys.readouterr().out
    assert "3 held-out problems per source, 4 samples each" in out and "pass@4" in out
    assert "share above 0.5 nats" in out
    assert any(line.startswith("decision") for line in out.splitlines())
    assert main(["entropy", "--run", str(tmp_path / "none"), "--set", "seed=1"]) == 2  # --run takes its own config
