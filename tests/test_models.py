"""Any saved model: a GPT-2 (and GPT-NeoX) built from a config with a locally trained BPE tokenizer
loads through ``model.path``, takes the generic Hugging Face backend with correct left padding and
absolute positions, samples responses of hundreds of tokens and trains through ``Trainer``;
``model.dtype`` runs the policy in bfloat16 with float32 log-probs and float32 master weights."""
import json

import pytest
import torch
from conftest import make_tiny_config

from explorl.cli import main
from explorl.config import load_config
from explorl.policy import load_policy
from explorl.policy.engine import HFBackend, RolloutEngine
from explorl.policy.factory import build_random_model
from explorl.policy.model import check_dtype, load_pretrained
from explorl.tasks import Problem
from explorl.train.loop import Trainer
from explorl.train.optim import MasterWeights
from explorl.train.update import token_logp_entropy
from run_records import run_metrics, metrics_without_time

PROMPTS = ["12+3=", "9=", "sort:5432=", "rev:abcdefg="]  # of different token lengths: left padding


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {family: build_random_model(family, root / family, hidden_size=32, layers=2, heads=2, seed=0)
            for family in ("gpt2", "gpt_neox")}


def _problems():
    return [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(PROMPTS)]


def _logp(logits, batch):
    return torch.log_softmax(logits.float(), -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)


def _check_against_unpadded_forward(model, batch, logits):
    """Each row's logits equal those of the model run on that row alone, without padding."""
    for r in range(batch.size):
        g = batch.group[r]
        prompt = batch.prompt_ids[g][batch.prompt_mask[g].bool()]
        length = int(batch.mask[r].sum())
        ids = torch.cat([prompt, batch.response_ids[r, :length]])[None]
        alone = model(input_ids=ids).logits[0, len(prompt) - 1: len(prompt) - 1 + length]
        assert torch.allclose(alone, logits[r, :length], atol=1e-4), r


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_hf_backend_pads_left_and_counts_positions_from_the_first_token(saved, family):
    model, tok = load_policy(make_tiny_config(model={"path": str(saved[family])}), log=_quiet)
    engine = RolloutEngine(model, tok)
    assert isinstance(engine.backend, HFBackend) and model.config.model_type == family
    assert tok.pad_token_id == tok.eos_token_id  # no pad token saved: padded with EOS, as GPT-2
    batch = engine.rollout(_problems(), [3, 1, 2, 2], [1.0] * 10, seed=0)
    assert batch.prompt_mask.sum(1).unique().numel() > 1  # prompts of several lengths
    model.train()  # the training forward: dropout was turned off at load, so it equals sampling's
    logits = engine.response_logits(batch)
    assert torch.allclose(_logp(logits, batch) * batch.mask, batch.old_logp, atol=1e-5)
    _check_against_unpadded_forward(model, batch, logits.detach())


def test_gpt2_samples_responses_of_hundreds_of_tokens(saved):
    model, tok = load_policy(make_tiny_config(model={"path": str(saved["gpt2"])}), log=_quiet)
    assert model.config.max_position_embeddings >= 256 + 16
    engine = RolloutEngine(model, tok)
    batch = engine.rollout(_problems()[:2], [2, 2], [1.0] * 256, seed=1)
    assert batch.response_ids.shape[1] == 256 and int(batch.lengths.max()) == 256
    logits = engine.response_logits(batch).detach()
    assert torch.allclose(_logp(logits, batch) * batch.mask, batch.old_logp, atol=1e-5)


def test_gpt2_with_a_local_bpe_tokenizer_trains_through_model_path(tmp_path, saved):
    folder = saved["gpt2"]
    assert json.loads((folder / "config.json").read_text())["resid_pdrop"] > 0  # GPT-2's own dropout
    cfg = make_tiny_config(model={"path": str(folder)}, train={"steps": 2, "checkpoint_every": 1, "lr": 1e-3},
                           objective=["ppo_clip", {"name": "entropy", "coef": 0.01}])
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=_quiet)
    tok = trainer.tokenizer
    text = "rev:abcdefg=gfedcba"
    assert len(tok(text, add_special_tokens=False).input_ids) < len(text)  # subword tokens
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    assert all(m.p == 0 for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.run()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(r["loss/total"] == r["loss/total"] for r in rows)
    # the checkpoint is a model folder of its own: explorl eval --run loads it
    assert main(["eval", "--run", str(tmp_path / "run"), "--samples", "4"]) == 0


def test_a_bfloat16_run_computes_log_probs_in_float32_and_resumes_exactly(tmp_path):
    cfg = make_tiny_config(model={"dtype": "bfloat16"}, train={"steps": 2, "checkpoint_every": 1, "lr": 1e-3},
                           objective=["ppo_clip", {"name": "entropy", "coef": 0.01}])
    full = Trainer(cfg, tmp_path / "full", progress=False, log=_quiet)
    assert {p.dtype for p in full.model.parameters()} == {torch.bfloat16}
    assert isinstance(full.optimizer, MasterWeights)
    logp, entropy = token_logp_entropy(torch.randn(2, 3, 5, dtype=torch.bfloat16), torch.zeros(2, 3, dtype=torch.long),
                                       True)
    assert logp.dtype == entropy.dtype == torch.float32
    before = [p.detach().clone() for p in full.model.parameters()]
    full.run()
    assert any(not torch.equal(a, b) for a, b in zip(before, full.model.parameters()))
    Trainer(cfg, tmp_path / "split", progress=False, log=_quiet).run(steps=1)
    resumed = Trainer(cfg, tmp_path / "split", resume=True, progress=False, log=_quiet)
    resumed.run()
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert p.dtype == torch.bfloat16 and torch.equal(p, q)
    for (p, a), (q, b) in zip(full.optimizer.pairs, resumed.optimizer.pairs):
        assert a.dtype == torch.float32 and torch.equal(a, b)  # the float32 master weights survive a resume
    assert metrics_without_time(tmp_path / "full") == metrics_without_time(tmp_path / "split")


def test_master_weights_keep_updates_smaller_than_a_bfloat16_step():
    """1 - 100 × 1e-4 in bfloat16 steps stays 1.0 (each step is below half an ulp); with float32
    master weights the model weight follows the master."""
    def train(optimizer_of):
        w = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
        opt = optimizer_of(w)
        for _ in range(100):
            opt.zero_grad()
            (w.float() * torch.ones(4)).sum().backward()
            opt.step()
        return w.detach().float()
    plain = train(lambda w: torch.optim.SGD([w], lr=1e-4))
    master = train(lambda w: MasterWeights([w], lr=1e-4, weight_decay=0.0))
    assert torch.equal(plain, torch.ones(4))
    assert torch.allclose(master, torch.full((4,), 0.99), atol=2e-3)


def test_an_unsupported_dtype_is_a_clear_error(monkeypatch):
    check_dtype("bfloat16", torch.device("cpu"))
    check_dtype("float16", torch.device("cpu"))  # CPU PyTorch runs float16 matmuls (slowly)

    def no_half(*args, **kwargs):
        raise RuntimeError('"log_softmax_lastdim_kernel_impl" not implemented for \'Half\'')
    monkeypatch.setattr(torch, "log_softmax", no_half)
    with pytest.raises(ValueError, match="model.dtype: float16 does not run on cpu.*use float32"):
        check_dtype("float16", torch.device("cpu"))


def test_make_model_writes_a_folder_model_path_loads(tmp_path, capsys):
    assert main(["make-model", "--family", "gpt2", "--out", str(tmp_path / "m"), "--hidden-size", "32",
                 "--layers", "1", "--heads", "2"]) == 0
    assert "model.path=" in capsys.readouterr().out
    model, _ = load_pretrained(tmp_path / "m")
    assert model.config.model_type == "gpt2" and model.config.n_layer == 1
    assert main(["make-model", "--family", "gpt2", "--out", str(tmp_path / "m")]) == 2  # never overwrites
    assert main(["make-model", "--family", "bert", "--out", str(tmp_path / "b")]) == 2
    assert "gpt2, gpt_neox, llama, qwen2" in capsys.readouterr().err
    cfg = load_config("configs/examples/gpt2.yaml", [f"model.path={tmp_path / 'm'}"])
    assert cfg.model.path == str(tmp_path / "m")
