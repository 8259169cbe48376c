"""Bad configs fail early with an error that names the key, the component or the value."""
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
