"""Bad configs fail early with an error that names the key, the component or the value."""
import re

import pytest

from explorl.config import Config, load_config
from explorl.train.plugins import Plugins


def test_defaults_and_testbed_file_agree():
    from dataclasses import asdict

    from explorl.config import DEFAULT_CONFIG, _from_dict, load_yaml
    file_cfg = _from_dict(Config, load_yaml(DEFAULT_CONFIG), "")
    assert asdict(file_cfg) == asdict(Config(recipe=file_cfg.recipe, **{
        k: getattr(file_cfg, k) for k in ("curriculum", "budget", "decoding", "advantage", "objective")}))


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown config key 'train.lrr'.*valid keys: .*lr"):
        load_config(bad)


def test_wrong_type_is_named():
    with pytest.raises(ValueError, match=r"train.steps: expected int, got str 'many'"):
        load_config(overrides=["train.steps=many"])
    with pytest.raises(ValueError, match=r"train.lr: expected float"):
        load_config(overrides=["train.lr=[1, 2]"])


def test_unknown_component_is_named():
    cfg = load_config(overrides=["curriculum=nonesuch"])
    with pytest.raises(ValueError, match=r"unknown curriculum component 'nonesuch' \(registered: .*uniform"):
        Plugins.from_config(cfg)


def test_unknown_component_parameter_and_type():
    cfg = load_config(overrides=["objective=[{name: ppo_clip, clip_ratio_hgh: 0.3}]"])
    with pytest.raises(ValueError, match=r"objective\[0\].clip_ratio_hgh: unknown parameter of objective 'ppo_clip'"):
        Plugins.from_config(cfg)
    cfg = load_config(overrides=["objective=[{name: ppo_clip, clip_ratio_high: high}]"])
    with pytest.raises(ValueError, match=r"objective\[0\].clip_ratio_high: expected float, got str"):
        Plugins.from_config(cfg)


def test_stacking_rules():
    cfg = load_config(overrides=["objective=[kl]"])
    with pytest.raises(ValueError, match="exactly one policy-loss term"):
        Plugins.from_config(cfg)
    cfg = load_config(overrides=["advantage=[grpo, grpo]"])
    with pytest.raises(ValueError, match="exactly one estimator"):
        Plugins.from_config(cfg)


def test_cross_field_checks():
    with pytest.raises(ValueError, match="loss_agg_mode"):
        load_config(overrides=["train.loss_agg_mode=sum"])
    with pytest.raises(ValueError, match=r"pass@128 needs eval.samples >= 128"):
        load_config(overrides=["eval.ks=[1, 128]"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ValueError, match=r"recipe 'nosuch' not found"):
        load_config(recipe="nosuch")


def test_recipe_then_config_then_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("recipe: grpo\ntrain:\n  lr: 0.5\n")
    cfg = load_config(cfg_file, ["train.steps=7"])
    assert cfg.train.lr == 0.5 and cfg.train.steps == 7
    assert cfg.objective[0]["name"] == "ppo_clip"


def test_exponent_floats_are_numbers_not_strings():
    # YAML 1.1 reads 1e-4 as a string; a float-typed key must still accept it
    cfg = load_config(overrides=["train.lr=1e-4", "objective=[{name: ppo_clip, clip_ratio_high: 2.8e-1}]"])
    assert cfg.train.lr == 1e-4
    plugins = Plugins.from_config(cfg)
    assert plugins.objectives[0].eps_high == 0.28


def test_an_empty_section_means_defaults_but_a_falsy_scalar_is_refused(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\neval:\n  samples: 64\n")  # `train:` with every key commented out
    assert load_config(cfg_file).train.steps == Config().train.steps
    for bad in ("train=0", "train=[]", "train=''", "train=false"):
        with pytest.raises(ValueError, match=r"train: expected a mapping"):
            load_config(overrides=[bad])


def test_verify_and_nonfinite_keys_are_checked():
    cfg = load_config(overrides=["verify.timeout=0.5", "verify.max_error_share=0", "train.max_nonfinite_steps=1"])
    assert cfg.verify.timeout == 0.5 and cfg.verify.max_error_share == 0 and cfg.train.max_nonfinite_steps == 1
    for override, message in [("verify.timeout=0", "verify.timeout: must be > 0"),
                              ("verify.timeout=.nan", "verify.timeout: expected a number, got NaN"),
                              ("verify.max_error_share=1.01", "verify.max_error_share: must be <= 1"),
                              ("verify.log_first=-1", "verify.log_first: must be >= 0"),
                              ("verify.check_at_start=2", "verify.check_at_start: expected bool"),
                              ("train.max_nonfinite_steps=0", "train.max_nonfinite_steps: must be >= 1")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            load_config(overrides=[override])


def test_testbed_tasks_are_checked_against_the_tokenizer_and_context_before_warmup():
    with pytest.raises(ValueError, match=r"tasks: task source 'addition': problem addition/.*more than the "
                                         r"model's context of 16 positions \(model.tiny.max_positions\)"):
        load_config(overrides=["model.tiny.max_positions=16"])
    with pytest.raises(ValueError, match=r"model.warmup.tasks: task source 'sorting'"):
        load_config(overrides=["model.warmup.tasks={sorting: {length: [120, 120]}}"])
    assert load_config(overrides=["model.tiny.max_positions=32"]).model.tiny.max_positions == 32
