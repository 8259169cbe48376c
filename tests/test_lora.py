"""LoRA through peft (``model.lora``): only the adapters train; the reference model is the base with
the adapters off, without a second copy of its weights; the fast path runs the adapters as the HF
forward does; checkpoints hold the adapters (covered by the manifest), resume exactly, refuse
another base, and ``explorl eval --run`` loads them."""
import copy
import gc
import json
import types
import warnings

import pytest
import torch
from conftest import make_tiny_config

from explorl.cli import main
from explorl.config import load_config
from explorl.policy import fastlm
from explorl.policy.engine import HFBackend, RolloutEngine
from explorl.policy.lora import AdaptersOff, add_lora
from explorl.policy.model import build_tiny
from explorl.policy.warmup import warmup
from explorl.tasks import ALPHABET, Problem
from explorl.train import checkpoint
from explorl.train.loop import Trainer
from explorl.train.update import reference_logp, token_logp_entropy
from run_records import metrics_without_time

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}
PROMPTS = ["12+3=", "9=", "sort:5432=", "rev:ab="]


def _quiet(*_):
    pass


def _problems():
    return [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(PROMPTS)]


@pytest.mark.parametrize("lora, message", [
    ({"rank": 4}, r"model\.lora\.rank: unknown key \(valid: r, alpha, dropout, target_modules\)"),
    ({"r": 0}, r"model\.lora\.r: must be >= 1"),
    ({"r": 2.5}, r"model\.lora\.r: expected an integer"),
    ({"alpha": 0}, r"model\.lora\.alpha: must be > 0"),
    ({"dropout": 1.0}, r"model\.lora\.dropout: must be < 1"),
    ({"dropout": -0.1}, r"model\.lora\.dropout: must be >= 0"),
    ({"target_modules": []}, r"model\.lora\.target_modules: expected a non-empty list"),
    ({"target_modules": "q_proj"}, r"model\.lora\.target_modules: expected a non-empty list"),
])
def test_bad_lora_settings_are_refused_naming_the_key(lora, message):
    with pytest.raises(ValueError, match=message):
        load_config(overrides=[f"model.lora={json.dumps(lora)}"])


def test_lora_on_modules_the_model_lacks_is_refused(tmp_path):
    cfg = make_tiny_config(model={"lora": {"target_modules": ["no_such_proj"]}})
    with pytest.raises(ValueError, match="model.lora.target_modules"):
        Trainer(cfg, tmp_path / "r", progress=False, log=_quiet)


def _copies_held_by(root, tensor) -> int:
    """How many distinct storages among the tensors reachable from ``root`` hold ``tensor``'s values."""
    seen, stack, storages = set(), [root], set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while stack:
            obj = stack.pop()
            if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType)):
                continue
            seen.add(id(obj))
            if isinstance(obj, torch.Tensor):
                if obj.shape == tensor.shape and obj.dtype == tensor.dtype and torch.equal(obj.detach(), tensor):
                    storages.add(obj.untyped_storage().data_ptr())
                continue
            stack.extend(gc.get_referents(obj))
    return len(storages)


def test_only_adapters_train_and_the_reference_is_the_base_without_a_copy(tmp_path):
    objective = ["ppo_clip", {"name": "kl", "coef": 0.01}, {"name": "entropy", "coef": 0.01}]
    full = Trainer(make_tiny_config(objective=objective), tmp_path / "full", progress=False, log=_quiet)
    embed = full.model.get_input_embeddings().weight.detach()
    assert _copies_held_by(full, embed) == 2  # full fine-tuning: the reference is a deep copy
    full.close()

    cfg = make_tiny_config(model={"lora": LORA}, objective=objective,
                           train={"steps": 2, "checkpoint_every": 2, "lr": 1e-2})
    trainer = Trainer(cfg, tmp_path / "lora", progress=False, log=_quiet)
    assert isinstance(trainer.ref_engine, AdaptersOff) and trainer.ref_engine.model is trainer.model
    assert isinstance(trainer.engine.backend, fastlm.FastLM)  # auto keeps the fast path with adapters
    assert _copies_held_by(trainer, trainer.model.get_input_embeddings().weight.detach()) == 1
    stepped = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert {id(p) for p in stepped} == {id(p) for n, p in trainer.model.named_parameters() if n in trainable}
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    trainer.run()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(p, after[n]) for n, p in base.items())  # the base is frozen
    assert any(after[n].abs().sum() > 0 for n in trainable if "lora_B" in n)  # B starts at 0 and moved

    # reference log-probs are the warm-started base model's, not the adapted policy's
    problems, _ = trainer.plugins.curriculum.next(4)
    batch = trainer._sample(problems, [2, 2, 2, 2], 3, {})
    ref = reference_logp(trainer.ref_engine, batch)
    plain, tok = warmup(cfg, log=_quiet)
    base_logits = RolloutEngine(plain, tok).response_logits(batch).detach()
    assert torch.allclose(ref, token_logp_entropy(base_logits, batch.response_ids, False)[0], atol=1e-5)
    policy = token_logp_entropy(trainer.engine.response_logits(batch).detach(), batch.response_ids, False)[0]
    assert not torch.allclose(ref * batch.mask, policy * batch.mask, atol=1e-3)


def _adapted_tiny():
    model, tok = build_tiny("qwen2", ALPHABET, 32, 2, 4, 2, 64, 64, seed=0)
    model = add_lora(model, {**LORA, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj", "lm_head"]}, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B = 0 at init: give the adapters an effect
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model, tok


def test_the_fast_path_runs_lora_adapters_as_the_hf_forward_does():
    model, tok = _adapted_tiny()
    fast, hf = RolloutEngine(model, tok, "fast"), RolloutEngine(model, tok, "hf")
    assert isinstance(RolloutEngine(model, tok).backend, fastlm.FastLM)
    batch = fast.rollout(_problems(), [3, 1, 2, 2], [1.0] * 8, seed=0)
    lf, lh = fast.response_logits(batch), hf.response_logits(batch)
    assert torch.allclose(lf, lh, atol=1e-5)
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    gf = torch.autograd.grad(lf.logsumexp(-1).sum(), adapters)
    gh = torch.autograd.grad(lh.logsumexp(-1).sum(), adapters)
    for a, b in zip(gf, gh):
        assert a.abs().sum() > 0 and torch.allclose(a, b, atol=1e-5)
    with torch.no_grad(), model.disable_adapter():
        off_fast, off_hf = fast.response_logits(batch), hf.response_logits(batch)
    assert torch.allclose(off_fast, off_hf, atol=1e-5)
    assert not torch.allclose(off_fast, lf.detach(), atol=1e-3)  # the adapters do change the policy
    assert batch.texts == hf.rollout(_problems(), [3, 1, 2, 2], [1.0] * 8, seed=0).texts


def test_fast_refuses_an_adapter_on_a_module_it_does_not_call():
    model, tok = _adapted_tiny()
    rotary = model.get_base_model().model.rotary_emb
    rotary.base_layer = torch.nn.Identity()  # stands for an adapter on a module the fast path reads directly
    assert "rotary_emb" in fastlm.why_not(model)
    with pytest.raises(ValueError, match="cannot run this model: it reads the weights of rotary_emb directly"):
        RolloutEngine(model, tok, "fast")
    assert isinstance(RolloutEngine(model, tok).backend, HFBackend)  # auto falls back to the HF forward


def _adapters(run):
    from safetensors.torch import load_file
    return load_file(str(checkpoint.latest(run, warn=None) / "model" / "adapter_model.safetensors"))


def test_a_lora_run_checkpoints_adapters_resumes_exactly_and_evaluates(tmp_path, capsys):
    cfg = make_tiny_config(model={"lora": {**LORA, "dropout": 0.1}}, train={"steps": 4, "checkpoint_every": 2,
                                                                          "lr": 1e-2, "micro_batch_size": 3},
                           objective=["ppo_clip", {"name": "kl", "coef": 0.01}, {"name": "entropy", "coef": 0.01}])
    Trainer(cfg, tmp_path / "full", progress=False, log=_quiet).run()
    Trainer(cfg, tmp_path / "split", progress=False, log=_quiet).run(steps=2)
    Trainer(cfg, tmp_path / "split", resume=True, progress=False, log=_quiet).run()
    a, b = _adapters(tmp_path / "full"), _adapters(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics_without_time(tmp_path / "full") == metrics_without_time(tmp_path / "split")
    ev = {run: json.loads((tmp_path / run / "eval.json").read_text())["end"] for run in ("full", "split")}
    assert ev["full"] == ev["split"]

    latest = checkpoint.latest(tmp_path / "full", warn=None)
    files = json.loads((latest / "manifest.json").read_text())["files"]
    assert {"model/adapter_model.safetensors", "model/adapter_config.json"} <= set(files)
    assert not any(name.startswith("model/model") for name in files)  # no copy of the base
    state = checkpoint.read_state(latest)
    assert len(state["base_model_sha256"]) == 64

    # explorl eval --run rebuilds the base, checks it, adds the adapters: the run's own final evaluation
    assert main(["eval", "--run", str(tmp_path / "full")]) == 0
    again = json.loads((tmp_path / "full" / f"eval_{latest.name}.json").read_text())
    assert again["pass@1"] == ev["full"]["pass@1"] and again["entropy"] == ev["full"]["entropy"]

    with pytest.raises(ValueError, match="trained on a base model whose weights hash to"):
        checkpoint.check_base(latest, "0" * 64)

    # damaged adapters: the manifest catches it and the run falls back to the previous checkpoint
    path = latest / "model" / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    warnings_seen = []
    assert checkpoint.latest(tmp_path / "full", warn=warnings_seen.append).name == "step_000002"
    assert "adapter_model.safetensors does not match its checksum" in warnings_seen[0]


def test_the_lora_example_config_is_valid():
    cfg = load_config("configs/examples/lora.yaml")
    assert cfg.model.lora["r"] == 8 and cfg.model.backend == "auto"
    copy.deepcopy(cfg)
