"""Memory: ``train.micro_batch_size`` accumulates gradients over parts of a minibatch and gives
the one-pass update (every aggregation mode, and objectives that take statistics over the
minibatch's tokens, and LoRA dropout, whose masks the second pass replays); gradient
checkpointing recomputes layers without changing gradients; the peak memory of each step is logged."""
import copy

import pytest
import torch
from conftest import make_tiny_config

from explorl.explore.objective.aggregate import MODES
from explorl.policy.engine import RolloutEngine
from explorl.policy.model import (
    build_tiny,
    enable_gradient_checkpointing,
    gradient_checkpointing,
)
from explorl.tasks import ALPHABET, Problem
from explorl.train.loop import Trainer
from explorl.train.optim import stepped_parameters
from explorl.train.plugins import Plugins
from explorl.train.update import micro_batches, optimise
from run_records import run_metrics

PROMPTS = ["12+3=", "9=", "sort:5432=", "rev:ab="]
COUNTS = [3, 2, 4, 3]  # micro-batches of 5 rows split groups: rows 0-4 | 5-9 | 10-11

OBJECTIVES = {
    "ppo_clip": ["ppo_clip"],
    "clip_cov": [{"name": "clip_cov", "clip_cov_ratio": 0.2, "clip_cov_lb": -10.0, "clip_cov_ub": 10.0}],
    "kl_cov": [{"name": "kl_cov", "kl_cov_ratio": 0.2}],
    "entropy_quantile": ["ppo_clip", {"name": "entropy_quantile", "top_entropy_quantile": 0.3},
                         {"name": "entropy", "coef": 0.05}],
    "lp_reg": [{"name": "lp_reg", "logp_neg_k_percent": 0.5, "min_p_threshold": 0.5}],
    "kl": ["ppo_clip", {"name": "kl", "coef": 0.1}],
}


def _setup(mode, objective):
    model, tok = build_tiny("qwen2", ALPHABET, 32, 2, 4, 2, 64, 64, seed=0)
    engine = RolloutEngine(model, tok)
    problems = [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(PROMPTS)]
    batch = engine.rollout(problems, COUNTS, [1.0] * 8, seed=0)
    gen = torch.Generator().manual_seed(0)
    batch.advantages = torch.randn(batch.size, generator=gen)
    # an older policy than the current one, so ratios differ from 1 and the clips bind
    batch.old_logp = (batch.old_logp + 0.3 * torch.randn(batch.old_logp.shape, generator=gen)) * batch.mask
    cfg = make_tiny_config(objective=OBJECTIVES[objective],
                           train={"loss_agg_mode": mode, "ppo_epochs": 1, "minibatches": 1, "max_grad_norm": 1e9,
                                  "problems_per_step": len(PROMPTS)})
    plugins = Plugins.from_config(cfg)
    ref = None
    if "ref_logp" in plugins.needs():
        ref = (batch.old_logp + 0.2 * torch.randn(batch.old_logp.shape, generator=gen)) * batch.mask
    return model, engine, batch, cfg, plugins, ref


def _gradient(model, engine, batch, cfg, plugins, ref, micro):
    """The gradient ``optimise`` would step with (one minibatch, one epoch), and its metrics."""
    cfg = copy.deepcopy(cfg)
    cfg.train.micro_batch_size = micro
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    captured = []
    optimizer.step = lambda: captured.extend(p.grad.clone() for p in stepped_parameters(optimizer))
    metrics = optimise(batch, engine, plugins, optimizer, cfg, 1, plugins.needs(), ref)
    return captured, metrics


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_give_the_one_pass_gradient(mode, objective):
    model, engine, batch, cfg, plugins, ref = _setup(mode, objective)
    whole, m_whole = _gradient(model, engine, batch, cfg, plugins, ref, None)
    seen = []
    real = engine.response_logits
    engine.response_logits = lambda b, rows=None, **kw: seen.append(len(rows)) or real(b, rows, **kw)
    parts, m_parts = _gradient(model, engine, batch, cfg, plugins, ref, 5)
    assert max(seen) == 5 and sum(seen) == 2 * batch.size  # a pass without and a pass with a graph
    assert any(g.abs().sum() > 0 for g in whole)
    for a, b in zip(whole, parts, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()
    # the objectives saw the whole minibatch once: same statistics, same metrics
    for key, value in m_whole.items():
        assert m_parts[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_micro_batches_split_rows_in_order():
    rows = torch.arange(7)
    assert [p.tolist() for p in micro_batches(rows, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [p.tolist() for p in micro_batches(rows, None)] == [rows.tolist()]
    assert [p.tolist() for p in micro_batches(rows, 7)] == [rows.tolist()]


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_gradient_checkpointing_recomputes_layers_with_the_same_gradients(backend):
    plain, tok = build_tiny("qwen2", ALPHABET, 32, 2, 4, 2, 64, 64, seed=0)
    checkpointed = copy.deepcopy(plain)
    enable_gradient_checkpointing(checkpointed)
    problems = [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(PROMPTS)]
    batch = RolloutEngine(plain, tok, backend).rollout(problems, COUNTS, [1.0] * 8, seed=0)
    grads, calls = [], []
    for model in (plain, checkpointed):
        engine = RolloutEngine(model, tok, backend)
        n = []
        hook = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda *_, n=n: n.append(1))
        model.train()
        logits = engine.response_logits(batch)
        logp = torch.log_softmax(logits.float(), -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
        (logp * batch.mask).sum().backward()
        hook.remove()
        calls.append(len(n))
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
        model.eval()
    assert calls[1] > calls[0]  # the checkpointed layer ran again in the backward pass
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6), name
    # sampling still runs with the KV cache and gives the same tokens
    again = RolloutEngine(checkpointed, tok, backend).rollout(problems, COUNTS, [1.0] * 8, seed=0)
    assert again.texts == batch.texts


def test_a_micro_batched_checkpointed_run_logs_peak_memory_and_trains_as_one_pass(tmp_path):
    runs = {}
    for name, checkpointed, micro in (("one-pass", False, None), ("micro", True, 3)):
        cfg = make_tiny_config(model={"device": "cpu", "gradient_checkpointing": checkpointed},
                               train={"steps": 2, "checkpoint_every": 2, "micro_batch_size": micro, "lr": 1e-3},
                               objective=["ppo_clip", {"name": "entropy", "coef": 0.01}])
        trainer = Trainer(cfg, tmp_path / name, progress=False, log=lambda *_: None)
        assert gradient_checkpointing(trainer.model) == checkpointed
        trainer.run()
        runs[name] = trainer
        rows = run_metrics(tmp_path / name)
        assert all(r["perf/peak_rss_mb"] > 10 for r in rows)
        assert all("perf/peak_cuda_mb" not in r for r in rows)  # the policy is on the CPU
    for (name, p), q in zip(runs["one-pass"].model.named_parameters(), runs["micro"].model.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name


def test_micro_batches_replay_lora_dropout_in_their_second_pass():
    """With LoRA dropout, pass 2 of each part must draw the dropout masks of pass 1, else the
    gradient is taken through other masks than the loss was. The reference runs the same parts
    with a graph, in order from the same random state (so with pass 1's masks), and back-propagates
    the loss through them directly."""
    from explorl.policy.lora import add_lora
    base, tok = build_tiny("qwen2", ALPHABET, 32, 2, 4, 2, 64, 64, seed=0)
    model = add_lora(base, {"r": 4, "alpha": 8, "dropout": 0.5, "target_modules": ["q_proj", "v_proj", "down_proj"]},
                     seed=0)
    with torch.no_grad():  # adapters that change the output, so the masks matter to the log-probs too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    engine = RolloutEngine(model, tok)
    problems = [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(PROMPTS)]
    batch = engine.rollout(problems, COUNTS, [1.0] * 8, seed=0)
    batch.advantages = torch.randn(batch.size, generator=torch.Generator().manual_seed(0))
    cfg = make_tiny_config(train={"ppo_epochs": 1, "minibatches": 1, "max_grad_norm": 1e9,
                                  "problems_per_step": len(PROMPTS)})
    plugins = Plugins.from_config(cfg)
    real = engine.response_logits

    def with_graph_by_parts(b, rows=None, **kw):
        return torch.cat([real(b, part, **kw) for part in micro_batches(rows, 5)])

    grads = {}
    for name, micro in (("micro", 5), ("reference", None), ("other masks", None)):
        engine.response_logits = real if micro else with_graph_by_parts
        torch.manual_seed(1 if name != "other masks" else 2)
        grads[name], _ = _gradient(model, engine, batch, cfg, plugins, None, micro)
    assert not all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads["reference"],
                                                                             grads["other masks"]))
    for a, b in zip(grads["reference"], grads["micro"], strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()
