"""Controls as study machinery: each control's settings derived from the finished run it
controls (steps, teacher tokens, the learnability pool), their rows and seeds, the second warm
start's rows, and the study-file keys that declare them."""
import json
from types import SimpleNamespace

import pytest

from explorl.compare.plan import Entry, NotDerivable, derived_sets
from explorl.config import load_config


def finished(run, steps, teacher):
    run.mkdir(parents=True)
    (run / "run_info.json").write_text(json.dumps({"steps": steps, "tokens": 999}))
    (run / "eval.json").write_text(json.dumps({"start": {}, "end": {}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "tokens/teacher": t}) + "\n"
                                               for i, t in enumerate(teacher)))


def test_a_controls_settings_derive_from_the_run_it_controls(tmp_path):
    finished(tmp_path / "runs" / "dynamic_sampling" / "seed1", 3, [0, 0, 0])
    finished(tmp_path / "runs" / "luffy" / "seed1", 3, [40, 25, 35])
    steps = Entry("ctl", "grpo", [1], control={"of": "dynamic_sampling", "match": "steps"})
    cfg = load_config(None, [], "dynamic_sampling")
    assert derived_sets(steps, tmp_path, 1, cfg) == ["train.steps=3", "train.max_tokens=null"]
    sft = Entry("sft_ctl", "sft_then_grpo", [1], control={"of": "luffy", "match": "teacher_tokens"})
    (item,) = derived_sets(sft, tmp_path, 1, load_config(None, [], "luffy"))
    # the recipe's own SFT phase, sized to the 40 + 25 + 35 teacher tokens LUFFY trained on at that seed
    assert item.startswith("guidance=") and json.loads(item[9:]) == [
        {"name": "sft", "phase": "before", "coef": 1.0, "teacher_tokens": 100}]
    pool = Entry("pool_ctl", "grpo", [1], control={"of": "learnability", "match": "pool"})
    learn = load_config(None, ["curriculum={name: learnability, pool_size: 24}"], "learnability")
    assert derived_sets(pool, tmp_path, 1, learn) == ["curriculum={name: uniform_pool, pool_size: 24}"]
    # the derived settings make a valid configuration of the control's recipe
    cfg = load_config(None, ["seed=1", "train.steps=1000000", "train.max_tokens=5", *derived_sets(steps, tmp_path, 1, cfg),
                             *derived_sets(pool, tmp_path, 1, learn)], "grpo")
    assert cfg.train.steps == 3 and cfg.train.max_tokens is None and cfg.curriculum["name"] == "uniform_pool"
    with pytest.raises(NotDerivable, match="waits for dynamic_sampling seed 0") as err:
        derived_sets(steps, tmp_path, 0, cfg)
    assert not err.value.final
    finished(tmp_path / "runs" / "luffy" / "seed0", 2, [0, 0])
    with pytest.raises(NotDerivable, match="no teacher tokens") as err:
        derived_sets(sft, tmp_path, 0, cfg)
    assert err.value.final


def _args(**kw):
    base = dict(seeds=2, tokens=100, eval_every_tokens=None, overrides=[], config=None, jobs=1,
                recipes="grpo,dynamic_sampling,luffy")
    return SimpleNamespace(**{**base, **kw})


def test_rows_of_a_study_recipes_second_warm_start_and_controls():
    from explorl.compare.study import _check_args
    entries = _check_args(_args(
        seeds_per_recipe={"grpo": 3}, second_warm_start={"seed": 7, "recipes": ["dynamic_sampling"]},
        controls={"steps_ctl": {"recipe": "grpo", "match": "steps", "of": "dynamic_sampling"},
                  "sft_ctl": {"recipe": "sft_then_grpo", "match": "teacher_tokens", "of": "luffy"}}))
    rows = {e.label: e for e in entries}
    assert rows["grpo"].seeds == [0, 1, 2] and rows["luffy"].seeds == [0, 1]
    assert rows["grpo@warm7"].sets == ["model.warmup.seed=7"] and rows["dynamic_sampling@warm7"].warm_start == 7
    assert rows["grpo@warm7"].seeds == [0, 1, 2] and "luffy@warm7" not in rows
    assert rows["steps_ctl"].control == {"of": "dynamic_sampling", "match": "steps"} and rows["steps_ctl"].seeds == [0, 1]
    with pytest.raises(ValueError, match="match teacher_tokens needs a recipe with an sft guidance"):
        _check_args(_args(controls={"c": {"recipe": "grpo", "match": "teacher_tokens", "of": "luffy"}}))
    with pytest.raises(ValueError, match="of 'xrpo' is not among the recipes"):
        _check_args(_args(controls={"c": {"recipe": "grpo", "match": "steps", "of": "xrpo"}}))
    with pytest.raises(ValueError, match="seeds_per_recipe: dump not among"):
        _check_args(_args(seeds_per_recipe={"dump": 4}))
    with pytest.raises(ValueError, match=r"k_max 16 is declared, so eval.samples must be >= 2·k_max = 32"):
        _check_args(_args(k_max=16, overrides=["eval.samples=16", "eval.ks=[1,16]"]))
    with pytest.raises(ValueError, match="heldout_problems 200 is declared, but eval.problems_per_source 32 x 5"):
        _check_args(_args(heldout_problems=200))


def test_the_study_file_keys(tmp_path):
    from explorl.compare.studyfile import load_study
    study = tmp_path / "s.yaml"
    study.write_text("tokens: 100\nseeds: 5\nseeds_per_recipe: {grpo: 10}\nrecipes: [grpo, dynamic_sampling, dump]\n"
                     "controls:\n  ctl: {recipe: grpo, match: steps, of: dynamic_sampling}\n"
                     "second_warm_start: {seed: 1, recipes: [dump]}\n"
                     "regimes:\n  a: {k_max: 16}\n  b: {recipes: [grpo, dump], k_max: 32, heldout_problems: 64}\n")
    (a, sa), (b, sb) = load_study(study)
    assert sa["seeds_per_recipe"] == {"grpo": 10} and sa["k_max"] == 16 and sa["heldout_problems"] == 128
    assert sa["controls"] == {"ctl": {"recipe": "grpo", "match": "steps", "of": "dynamic_sampling"}}
    assert sb["controls"] == {} and sb["k_max"] == 32 and sb["heldout_problems"] == 64  # b runs no dynamic sampling
    assert sa["second_warm_start"] == sb["second_warm_start"] == {"seed": 1, "recipes": ["dump"]}
    study.write_text("tokens: 100\nrecipes: [grpo]\nseeds_per_recipe: {dump: 3}\nregimes:\n  a: {}\n")
    with pytest.raises(ValueError, match="seeds_per_recipe names dump, which no regime runs"):
        load_study(study)
    study.write_text("tokens: 100\nrecipes: [grpo]\nregimes:\n  a: {controls: {c: {recipe: grpo, of: grpo}}}\n")
    with pytest.raises(ValueError, match=r"controls.c must be \{recipe: R, match"):
        load_study(study)
