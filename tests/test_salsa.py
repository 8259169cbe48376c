"""SALSA (``reference: {kind: soup, ...}``): the KL reference is a weight soup of fine-tuned models;
the policy starts at the soup or at its first member; every term reading the reference reads it."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch
from conftest import make_tiny_config

from explorl.config import CONFIG_DIR, load_config, validate
from explorl.explore.advantage.repr_bonus import mean_response_hidden
from explorl.policy import load_policy, load_policy_and_reference
from explorl.policy.engine import RolloutEngine
from explorl.policy.lora import AdaptersOff
from explorl.policy.model import build_tiny, unwrap
from explorl.policy.reference import member_config
from explorl.policy.warmup import warm_model_dir, warmup
from explorl.tasks import ALPHABET
from explorl.train.loop import Trainer
from explorl.train.update import reference_logp

KL = ["ppo_clip", {"name": "kl", "coef": 0.04}]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _quiet(*_):
    pass


def _save_tiny(path, seed, hidden=32):
    model, tokenizer = build_tiny("qwen2", ALPHABET, hidden, 1, 2, 1, 64, 128, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two saved models of one architecture (the members), and one of another."""
    root = tmp_path_factory.mktemp("soup")
    return _save_tiny(root / "a", 1), _save_tiny(root / "b", 2), _save_tiny(root / "wide", 3, hidden=48)


def _state(path):
    from explorl.policy.model import load_pretrained
    return {k: v.float() for k, v in load_pretrained(path)[0].state_dict().items()}


def soup_config(folders, weights=(0.3, 0.7), policy_init="soup", **sections):
    a, b, _ = folders
    return make_tiny_config(model={"path": a, **sections.pop("model", {})},
                            reference={"kind": "soup", "models": [a, b], "weights": list(weights),
                                       "policy_init": policy_init}, **sections)


def test_the_soup_is_the_weighted_mean_of_its_members_parameter_by_parameter(folders):
    a, b = _state(folders[0]), _state(folders[1])
    policy, _, ref = load_policy_and_reference(soup_config(folders), _quiet)
    assert ref is None                                        # the start is the soup: held as today
    got = policy.state_dict()
    assert got.keys() == a.keys()
    for key in a:
        assert torch.allclose(got[key], 0.3 * a[key] + 0.7 * b[key], atol=1e-7), key
    assert not torch.allclose(got["lm_head.weight"], a["lm_head.weight"], atol=1e-3)

    first, _, ref = load_policy_and_reference(soup_config(folders, policy_init="first"), _quiet)
    assert all(torch.equal(first.state_dict()[k], a[k]) for k in a)   # starts at the first member
    assert all(torch.allclose(ref.state_dict()[k], 0.3 * a[k] + 0.7 * b[k], atol=1e-7) for k in a)
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    alone, _ = load_policy(soup_config(folders, policy_init="first"))  # eval and benches: the start only
    assert all(torch.equal(alone.state_dict()[k], a[k]) for k in a)


@pytest.mark.parametrize("policy_init", ["soup", "first"])
def test_a_soup_of_one_member_is_todays_reference(tmp_path, policy_init):
    """A soup of the run's own warm start alone: the same policy, the same reference log-probs
    (held as today's copy at the soup, as its own frozen model at the first member)."""
    today = Trainer(make_tiny_config(objective=KL), tmp_path / "today", progress=False, log=_quiet)
    one = make_tiny_config(objective=KL, reference={"kind": "soup", "models": [{"warmup_seed": 0}],
                                                    "policy_init": policy_init})
    soup = Trainer(one, tmp_path / "soup", progress=False, log=_quiet)
    for key, value in today.model.state_dict().items():
        assert torch.equal(soup.model.state_dict()[key], value), key
    problems, _ = today.plugins.curriculum.next(4)
    batch = today._sample(problems, [3, 3, 3, 3], 1, {})
    assert torch.allclose(reference_logp(today.ref_engine, batch), reference_logp(soup.ref_engine, batch), atol=1e-6)
    today.close()
    soup.close()


def test_the_kl_to_the_soup_is_zero_where_the_policy_starts_at_it(folders, tmp_path):
    at_soup = Trainer(soup_config(folders, objective=KL), tmp_path / "soup", progress=False, log=_quiet)
    m = at_soup.train_step()
    assert m["ref/kl"] == pytest.approx(0.0, abs=1e-6)       # k3 of the sampled tokens, before the update
    at_soup.close()
    at_first = Trainer(soup_config(folders, policy_init="first", objective=KL), tmp_path / "first", progress=False,
                       log=_quiet)
    m = at_first.train_step()
    assert m["ref/kl"] > 1e-3 and m["loss/kl"] > 1e-3         # the first member is not the soup
    at_first.close()


def test_every_term_reading_the_reference_reads_the_soup(folders, tmp_path):
    """``kl`` (ref_logp) and ``repr_bonus`` (ref_engine) see the soup's frozen model."""
    cfg = soup_config(folders, policy_init="first", objective=KL,
                      advantage=["grpo", {"name": "repr_bonus", "bonus_coef": 0.01}])
    trainer = Trainer(cfg, tmp_path / "r", progress=False, log=_quiet)
    a, b = _state(folders[0]), _state(folders[1])
    soup_model = build_tiny("qwen2", ALPHABET, 32, 1, 2, 1, 64, 128, 0)[0]
    soup_model.load_state_dict({k: 0.3 * a[k] + 0.7 * b[k] for k in a})
    problems, _ = trainer.plugins.curriculum.next(4)
    batch = trainer._sample(problems, [2, 2, 2, 2], 1, {})
    expect = reference_logp(RolloutEngine(soup_model.eval(), trainer.tokenizer), batch)
    assert torch.allclose(reference_logp(trainer.ref_engine, batch), expect, atol=1e-5)
    soup_engine = RolloutEngine(soup_model, trainer.tokenizer)
    assert torch.allclose(mean_response_hidden(trainer.ref_engine, batch), mean_response_hidden(soup_engine, batch),
                          atol=1e-5)                        # the features repr_bonus reads
    trainer._advantages(batch)
    trainer.close()


@pytest.mark.parametrize("policy_init", ["soup", "first"])
def test_under_lora_the_reference_is_the_full_soup(folders, tmp_path, policy_init):
    """At the soup, the base is the soup (adapters off, no copy); at the first member, the base is that
    member and the soup is a separate frozen full model."""
    a, b = _state(folders[0]), _state(folders[1])
    soup = {k: 0.3 * a[k] + 0.7 * b[k] for k in a}
    trainer = Trainer(soup_config(folders, policy_init=policy_init, objective=KL, model={"lora": LORA}),
                      tmp_path / "r", progress=False, log=_quiet)
    base = {k: v for k, v in unwrap(trainer.model).state_dict().items() if "lora_" not in k}
    base = {k.replace(".base_layer", ""): v for k, v in base.items()}
    if policy_init == "soup":
        assert isinstance(trainer.ref_engine, AdaptersOff)
        assert all(torch.allclose(base[k], soup[k], atol=1e-7) for k in soup)
    else:
        assert isinstance(trainer.ref_engine, RolloutEngine) and trainer.ref_engine.model is not trainer.model
        assert all(torch.equal(base[k], a[k]) for k in a)
        held = trainer.ref_engine.model.state_dict()
        assert all(torch.allclose(held[k], soup[k], atol=1e-7) for k in soup)
    soup_model = build_tiny("qwen2", ALPHABET, 32, 1, 2, 1, 64, 128, 0)[0]
    soup_model.load_state_dict(soup)
    problems, _ = trainer.plugins.curriculum.next(4)
    batch = trainer._sample(problems, [2, 2, 2, 2], 1, {})
    expect = reference_logp(RolloutEngine(soup_model.eval(), trainer.tokenizer), batch)
    assert torch.allclose(reference_logp(trainer.ref_engine, batch), expect, atol=1e-5)
    trainer.close()


def test_warm_start_members_differ_only_in_their_data_order():
    cfg = make_tiny_config()
    assert warm_model_dir(member_config(cfg, cfg.model.tiny.seed)) == warm_model_dir(cfg)  # the run's own
    other = member_config(cfg, 1)
    assert warm_model_dir(other) != warm_model_dir(cfg)
    assert other.model.tiny == cfg.model.tiny                  # same initialisation
    one, _ = warmup(cfg, log=_quiet)
    two, _ = warmup(other, log=_quiet)
    assert not torch.equal(one.lm_head.weight, two.lm_head.weight)


def test_the_start_evaluation_is_not_shared_across_starts(folders):
    from explorl.eval.shared import start_eval_path
    a = folders[0]
    plain = make_tiny_config(model={"path": a})
    assert start_eval_path(plain) != start_eval_path(soup_config(folders))
    assert start_eval_path(soup_config(folders)) != start_eval_path(soup_config(folders, weights=(0.5, 0.5)))
    assert start_eval_path(plain) == start_eval_path(make_tiny_config(model={"path": a}, objective=KL))


def test_the_recipe_records_where_the_policy_starts_and_explorl_list_shows_the_level():
    cfg = load_config(CONFIG_DIR / "tiny.yaml", recipe="salsa")
    assert cfg.reference == {"kind": "soup", "models": [{"warmup_seed": 0}, {"warmup_seed": 1}],
                             "weights": [0.5, 0.5], "policy_init": "soup"}
    defaults = load_config(CONFIG_DIR / "tiny.yaml", ["reference={kind: soup, models: [{warmup_seed: 1}, "
                                                 "{warmup_seed: 2}]}"])
    assert defaults.reference["weights"] == [0.5, 0.5] and defaults.reference["policy_init"] == "soup"
    from explorl.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["list", "--level", "reference"]) == 0
    assert "soup" in out.getvalue() and "arXiv:2411.01798" in out.getvalue() and "policy_init='soup'" in out.getvalue()


@pytest.mark.parametrize("reference, needle", [
    ({"kind": "soup", "models": ["A", "B"], "weights": [0.7, 0.5]}, "reference: weights: [0.7, 0.5] sum to 1.2"),
    ({"kind": "soup", "models": ["A", "B"], "weights": [1.0]}, "reference: weights: 1 weight(s) for 2 model(s)"),
    ({"kind": "soup", "models": ["A", "B"], "weights": [1.5, -0.5]}, "reference: weights[1]: expected a finite"),
    ({"kind": "soup", "models": ["A", "/no/such/folder"]}, "reference: models[1]: folder '/no/such/folder' not found"),
    ({"kind": "soup", "models": ["A", "EMPTY"]}, "holds no config.json"),
    ({"kind": "soup", "models": ["A", "WIDE"]}, "reference.models[1]:"),
    ({"kind": "soup", "models": []}, "reference: models: expected a non-empty list"),
    ({"kind": "soup", "models": [{"warmup_seed": -1}]}, "reference: models[0]: warmup_seed"),
    ({"kind": "soup", "models": [{"seed": 1}]}, "reference: models[0]: expected a saved model folder"),
    ({"kind": "soup", "models": ["A"], "policy_init": "middle"}, "reference: policy_init: 'middle' is not one of"),
    ({"kind": "soup", "models": ["A"], "alpha": 0.5}, "reference.alpha: unknown parameter"),
    ({"kind": "soup"}, "reference: reference 'soup' needs parameter(s) models"),
    ({"kind": "salad"}, "unknown reference component 'salad' (registered: initial, soup)"),
    ({"models": ["A"]}, "reference: expected {kind: initial}"),
    ({"kind": "soup", "models": [{"warmup_seed": 1}]}, "reference.models[0]: a warm start"),
])
def test_bad_reference_sections_are_refused_naming_the_key(folders, tmp_path, reference, needle):
    a, _, wide = folders
    (tmp_path / "empty").mkdir()
    swap = {"A": a, "B": folders[1], "WIDE": wide, "EMPTY": str(tmp_path / "empty")}
    reference = {k: ([swap.get(m, m) if isinstance(m, str) else m for m in v] if k == "models" else v)
                 for k, v in reference.items()}
    cfg = make_tiny_config(model={"path": a}, reference=reference)
    with pytest.raises(ValueError) as info:
        validate(cfg)
    assert needle in str(info.value), str(info.value)


def test_a_member_of_another_architecture_is_refused_when_loaded(folders):
    """A folder member against the testbed policy (no folder to compare before loading)."""
    cfg = make_tiny_config(reference={"kind": "soup", "models": [{"warmup_seed": 0}, folders[2]]})
    validate(cfg)
    with pytest.raises(ValueError, match=r"reference\.models\[1\]: .* does not have the policy's architecture"):
        load_policy(cfg)
