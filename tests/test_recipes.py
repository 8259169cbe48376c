"""Every recipe in configs/recipes builds its plug-ins; the stacks (recipes that combine
methods of several levels) run, with each level's component the one they name."""
from __future__ import annotations


import pytest

from explorl.config import RECIPE_DIR, load_config
from explorl.train.plugins import Plugins
from run_records import run_metrics

RECIPES = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
STACKS = [r for r in RECIPES if r.startswith("stack_")]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_builds(recipe):
    Plugins.from_config(load_config(recipe=recipe))


def test_there_are_stacks_across_levels():
    assert len(STACKS) >= 4


@pytest.mark.parametrize("recipe", STACKS)
def test_a_stack_runs_with_every_level_it_names(recipe, tiny_config, tmp_path):
    from explorl.config import load_yaml, recipe_path
    from explorl.train.loop import Trainer
    spec = load_yaml(recipe_path(recipe))
    trainer = Trainer(tiny_config(recipe=recipe, train={"steps": 2}), tmp_path / "run", progress=False,
                      log=lambda *_: None)
    p = trainer.plugins
    name = lambda x: x if isinstance(x, str) else x["name"]  # noqa: E731
    assert p.curriculum.registered_name == name(spec["curriculum"])
    assert p.budget.registered_name == name(spec["budget"])
    assert [o.registered_name for o in p.objectives] == [name(o) for o in spec["objective"]]
    assert [g.registered_name for g in p.guidance or []] == [name(g) for g in spec.get("guidance", [])]
    assert p.rollout.registered_name == name(spec.get("rollout", "flat"))
    trainer.run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 2
