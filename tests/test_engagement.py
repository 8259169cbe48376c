"""Whether a mechanism acted: the criteria components declare (``explorl.explore.acted``), the
metrics that feed them, the link to the pre-registered hypotheses, and a real on-policy run in
which clip-higher cannot fire and is reported as not engaged."""
import pytest
import torch

from explorl.explore.acted import ALWAYS, Acted, AnyOf, check_run
from explorl.explore.advantage.grpo import GRPO
from explorl.explore.advantage.passk import PassK
from explorl.explore.base import Groups, LossContext
from explorl.explore.guidance.sft import SFT
from explorl.explore.objective.ppo_clip import PPOClip

STEPS = [{"x": 0.1, "y": 2.0}, {"x": 0.2}, {"x": 0.6, "y": 1.0}, {"z": 5}]  # x logged on 3 steps, y on 2


@pytest.mark.parametrize("criterion, acted, value", [
    (Acted("x", ">", 0.25), True, (0.1 + 0.2 + 0.6) / 3),
    (Acted("x", ">=", 0.6, reduce="max"), True, 0.6),
    (Acted("x", ">", 0.15, reduce="min"), False, 0.1),
    (Acted("x", ">=", 0.5, reduce="range"), True, 0.5),
    (Acted("y", "<", 3, reduce="sum"), False, 3.0),
    (Acted("x", ">=", 0.5, reduce="share", step_above=0.1), True, 2 / 3),   # 0.2 and 0.6 of the 3 steps
    (Acted("x", ">=", 0.7, reduce="share", step_above=0.1), False, 2 / 3),
])
def test_a_criterion_reduces_the_logged_steps_and_compares(criterion, acted, value):
    ok, note = criterion.check(STEPS)
    assert ok is acted and note.endswith(f"= {value:.4g}")


def test_missing_metric_any_of_and_always():
    ok, note = Acted("never/logged", ">", 0).check(STEPS)
    assert not ok and "never logged" in note
    assert AnyOf((Acted("never/logged", ">", 0), Acted("x", ">", 0.5, reduce="max"))).check(STEPS)[0]
    assert not AnyOf((Acted("never/logged", ">", 0), Acted("x", ">", 0.7, reduce="max"))).check(STEPS)[0]
    assert ALWAYS.check([])[0]
    with pytest.raises(ValueError, match="reduce"):
        Acted("x", ">", 0, reduce="median")


def test_check_run_counts_mechanisms_only():
    clip, clip_higher = PPOClip(0.2, 0.2), PPOClip(0.2, 0.28)
    report = check_run([GRPO(), clip], [{"loss/clip_frac_high": 0.1}])
    assert report == {"engaged": None, "components": {}}  # GRPO's own components: a baseline
    report = check_run([GRPO(scale_by_std=False), clip_higher], [{"loss/clip_higher_frac": 0.0}])
    assert report["components"]["grpo"]["engaged"] and not report["components"]["ppo_clip"]["engaged"]
    assert report["engaged"] is False and report["components"]["ppo_clip"]["notes"] == ["mean loss/clip_higher_frac = 0"]


def test_clip_higher_logs_the_tokens_only_the_higher_clip_trains_on():
    # ratios 1.0, 1.25, 1.25, 1.3, 0.7: with A > 0 only the 1.25s lie in (1.2, 1.28]; the 1.25 with A < 0
    # and the 1.3 (past 1.28) do not count
    ratio = torch.tensor([[1.0, 1.25, 1.25, 1.3, 0.7]])
    old = torch.full_like(ratio, 0.5)
    ctx = LossContext(logp=(old * ratio).log(), old_logp=old.log(), behaviour_logp=old.log(),
                      advantages=torch.tensor([[1.0, 1.0, -1.0, 1.0, 1.0]]), mask=torch.ones_like(ratio))
    _, m = PPOClip(0.2, 0.28).term(ctx)
    assert m["loss/clip_higher_frac"] == pytest.approx(1 / 5)
    assert "loss/clip_higher_frac" not in PPOClip(0.2, 0.2).term(ctx)[1]  # symmetric: no such mechanism
    assert PPOClip(0.2, 0.2).engagement() is None


def test_passk_logs_the_share_of_groups_given_its_advantage():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    m = torch.ones_like(r)
    _, metrics = PassK(k=2).compute(Groups(rewards=r, mask=m, lengths=m, logp_mean=torch.zeros_like(r),
                                           problems=[None] * 4))
    assert metrics["adv/passk_mixed_groups"] == 0.5  # groups 0 and 3 have mixed rewards


def test_sft_and_dr_grpo_declare_what_shows_they_acted():
    assert GRPO(scale_by_std=False).engagement() == (ALWAYS,) and GRPO().engagement() is None
    before = SFT(phase="before", teacher_tokens=100).engagement()[0]
    assert before.metric == "guide/sft_steps" and before.check([{"guide/sft_steps": 3.0}])[0]
    assert SFT().engagement()[0].metric == "guide/demo_rows"


def test_every_hypothesis_names_mechanisms_its_recipe_has_and_declares():
    """Each recipe of docs/hypotheses.md that exists in configs/recipes has, for each name in
    ``engaged``, a component of that name that declares a criterion."""
    from explorl.compare.hypotheses import load
    from explorl.compare.results import mechanism_components
    from explorl.config import RECIPE_DIR, load_config
    checked = 0
    for h in load():
        if not h.engaged or not (RECIPE_DIR / f"{h.recipe}.yaml").exists():
            continue
        components = {c.registered_name: c for c in mechanism_components(load_config(None, [], h.recipe))}
        for name in h.engaged:
            assert name in components and components[name].engagement(), (h.id, name)
        checked += 1
    assert checked >= 35


def test_on_policy_clip_higher_is_not_engaged(tiny_config, tmp_path):
    """One update per batch: π_θ = π_old when the loss is taken, the ratio is 1, clip-higher has
    nothing to free; the run's engagement record says so."""
    from explorl.compare.results import engagement, read_metrics
    from explorl.train.loop import Trainer
    cfg = tiny_config(recipe="clip_higher", train={"steps": 2, "ppo_epochs": 1, "minibatches": 1})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    metrics = read_metrics(tmp_path / "run")
    assert [m["loss/clip_higher_frac"] for m in metrics] == [0.0, 0.0]
    record = engagement(tmp_path / "run", metrics)
    assert record["engaged"] is False and not record["components"]["ppo_clip"]["engaged"]
