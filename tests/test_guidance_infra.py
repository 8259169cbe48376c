"""The guidance infrastructure: teachers, rows of each kind, where their loss comes from, and
how their tokens are counted."""
import json
from collections import Counter

import pytest
import torch

from explorl.batch import DEMO, OFF_POLICY, ON_POLICY
from explorl.explore.base import LossContext
from explorl.tasks import TaskMix
from explorl.tasks.countdown import Countdown, parse_expression
from explorl.teachers.solver import Solver, countdown_solutions
from explorl.train.loop import Trainer
from explorl.train.update import combine_terms
from run_records import run_metrics


def test_the_two_countdown_solver_orders_give_different_correct_solutions():
    numbers, target = [2, 3, 7, 9], 41
    asc, desc = countdown_solutions(numbers, target, "ascending", 3), countdown_solutions(numbers, target, "descending", 3)
    assert asc and desc and asc[0] != desc[0]
    for text in asc + desc:
        value, used = parse_expression(text)
        assert value == target and not Counter(used) - Counter(numbers), text
    source = Countdown(numbers=(3, 4))
    differ = 0
    for seed in range(20):
        p = source.problem(seed)
        a = Solver("ascending").solutions(p, 1)
        d = Solver("descending").solutions(p, 1)
        assert a and d, p.prompt
        assert source.verify(p, a[0]) == 1.0 and source.verify(p, d[0]) == 1.0
        differ += a[0] != d[0]
    assert differ >= 10, "the orders should usually reach the target by different routes"


def test_demonstration_rows_stay_out_of_group_statistics(tiny_model):
    from explorl.policy.engine import RolloutEngine
    model, tokenizer = tiny_model
    engine = RolloutEngine(model, tokenizer)
    mix = TaskMix.from_config({"addition": {"digits": [1, 1]}})
    problems = [mix.sources["addition"].problem(i) for i in range(2)]
    batch = engine.rollout(problems, [3, 3], [1.0] * 4, seed=0)
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    before = batch.groups()
    demo = engine.score_responses(problems, [1, 1], texts=[p.answer for p in problems], kind=DEMO)
    demo.rewards = torch.ones(2)
    mixed = batch.add_rows(demo, [0, 1])
    after = mixed.groups()
    assert mixed.size == 8 and mixed.kind_counts()["demo"] == 2
    assert torch.equal(after.mask.sum(1), before.mask.sum(1))  # 3 rollouts per group, the demos left out
    assert torch.allclose((after.rewards * after.mask).sum(1), (before.rewards * before.mask).sum(1))


def test_score_responses_gives_the_policys_log_probs_of_given_tokens(tiny_model):
    from explorl.policy.engine import RolloutEngine
    from explorl.train.update import token_logp_entropy
    model, tokenizer = tiny_model
    engine = RolloutEngine(model, tokenizer)
    p = TaskMix.from_config({"addition": {"digits": [1, 1]}}).sources["addition"].problem(3)
    rows = engine.score_responses([p], [2], texts=[p.answer, "12"])
    logits = engine.response_logits(rows)
    logp, _ = token_logp_entropy(logits, rows.response_ids, False)
    assert torch.allclose(rows.old_logp, logp * rows.mask, atol=1e-5)
    assert rows.row_kind.tolist() == [OFF_POLICY, OFF_POLICY] and torch.all(rows.behaviour_logp == 0)
    assert rows.response_ids[0, int(rows.lengths[0]) - 1] == tokenizer.eos_token_id  # ends like a sampled response


def test_a_row_kind_no_term_covers_is_an_error():
    from explorl.explore.objective.ppo_clip import PPOClip
    ctx = LossContext(logp=torch.zeros(2, 3, requires_grad=True), old_logp=torch.zeros(2, 3),
                      behaviour_logp=torch.zeros(2, 3), advantages=torch.ones(2, 3), mask=torch.ones(2, 3),
                      kind=torch.tensor([ON_POLICY, OFF_POLICY]))
    with pytest.raises(ValueError, match="off_policy rows but no guidance method"):
        combine_terms([PPOClip()], ctx)


def test_teacher_tokens_are_counted_apart_from_the_policys_budget(tmp_path, tiny_config):
    cfg = tiny_config(teachers={"solver": {"kind": "solver"}}, guidance=[{"name": "sft", "coef": 0.5}],
                      train={"steps": 2, "max_tokens": 10**6})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "run")
    assert all(r["rows/demo"] == 4 and r["tokens/teacher"] > 0 for r in rows)
    assert rows[-1]["tokens/total"] == sum(r["tokens/step"] for r in rows)  # the budget: policy tokens only
    assert rows[-1]["tokens/teacher_total"] == sum(r["tokens/teacher"] for r in rows)


def test_sft_before_training_spends_its_teacher_tokens_first(tmp_path, tiny_config):
    cfg = tiny_config(teachers={"solver": {"kind": "solver"}},
                      guidance=[{"name": "sft", "phase": "before", "teacher_tokens": 120}], train={"steps": 1})
    logged = []
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=logged.append)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer._before_training()
    assert any("sft before training" in line for line in logged)
    assert trainer.teacher_tokens >= 120 and trainer.tokens == 0  # teacher tokens only, no policy sampling
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in start.items())
    trainer.close()


def test_teacher_tokens_spent_before_training_are_reported(tmp_path, tiny_config):
    from explorl.compare.results import run_summary
    cfg = tiny_config(teachers={"solver": {"kind": "solver"}},
                      guidance=[{"name": "sft", "phase": "before", "teacher_tokens": 120}], train={"steps": 2})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    trainer.run()
    rows = run_metrics(tmp_path / "run")
    assert rows[0]["tokens/teacher"] == trainer.teacher_tokens >= 120  # logged with step 1
    assert "tokens/teacher" not in rows[1] and rows[1]["tokens/teacher_total"] == trainer.teacher_tokens
    (tmp_path / "run" / "run_info.json").write_text(json.dumps({"wall_s": 1.0}))
    assert run_summary(tmp_path / "run", 0)["teacher_tokens"] == trainer.teacher_tokens


def test_guidance_settings_are_checked(tiny_config):
    from explorl.train.plugins import Plugins
    with pytest.raises(ValueError, match="teacher 'nope' is not in the teachers: section"):
        Plugins.from_config(tiny_config(guidance=[{"name": "sft", "teachers": ["nope"]}]))
    with pytest.raises(ValueError, match="both define the loss of demo rows"):
        Plugins.from_config(tiny_config(teachers={"s": {"kind": "solver"}}, guidance=["sft", "sft"]))
    with pytest.raises(ValueError, match="teachers.t: expected a mapping with a 'kind'"):
        Plugins.from_config(tiny_config(teachers={"t": "solver"}))
