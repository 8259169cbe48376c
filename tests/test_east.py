"""EAST (entropic activation steering, ``decoding: east``) and the engine's activation
interventions: the vector against a hand computation, steering with β = 0 against plain
decoding, the behaviour log-probs against a forward under an independent hook, the hook's
absence outside sampling, both backends, checkpointed state, and (slow) the effect on the
answer entropy of the testbed's warm-started model."""
import math
import random

import pytest
import torch

from explorl.batch import OFF_POLICY, RolloutBatch
from explorl.explore.decoding.east import EAST, answer_entropy, group_answer_entropies, steering_vector
from explorl.policy.engine import RolloutEngine
from explorl.policy.intervention import AddVector
from explorl.tasks import Problem, TaskMix
from run_records import run_metrics, unbroken_and_resumed

BACKENDS = ["fast", "hf"]
PROMPTS = ["12+3=", "9=", "sort:5432="]


def problems():
    return [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(PROMPTS)]


def direction(d=32, seed=0):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


class Counting(AddVector):
    """An ``AddVector`` that counts its calls (prompt and decoded-token forwards apart)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = {True: 0, False: 0}

    def __call__(self, h, prompt):
        self.calls[prompt] += 1
        return super().__call__(h, prompt)


# ---- the vector ----------------------------------------------------------------------------
def test_answer_entropy_is_the_entropy_of_the_parsed_answers():
    assert answer_entropy(["3", "3", "3", "3"]) == 0.0
    assert answer_entropy(["3", "4", "3", "4"]) == pytest.approx(math.log(2))
    assert answer_entropy(["1", "2", "3"]) == pytest.approx(math.log(3))
    assert answer_entropy(["1", None, None, "1"]) == pytest.approx(math.log(2))  # no answer is one action
    # answers are parsed as the verifier reads them: the scratchpad sources' text after the last '>'
    mix = TaskMix.from_config({"addition_steps": {"digits": [4, 4]}})
    p = mix.sample(random.Random(0))
    assert mix.extract_answer(p, "1+2+0=3;>41 ") == mix.extract_answer(p, "9+9+1=19;>41") == "41"
    assert mix.extract_answer(p, "no mark") is None


def test_group_entropies_count_the_policys_own_rows_of_groups_of_two_or_more():
    mix = TaskMix.from_config({"addition": {"digits": [1, 1]}})
    ps = [Problem(id=f"addition/{i}", prompt=f"{i}+0=", answer=str(i), source="addition") for i in range(3)]
    texts = ["1", "1", "2", "x",    # group 0: answers 1, 1, 2 (+ a teacher's row, not counted)
             "5", "5",              # group 1: unanimous
             "7"]                   # group 2: one rollout, no entropy
    group = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    R = len(texts)
    batch = RolloutBatch(problems=ps, counts=[4, 2, 1], group=group, prompt_ids=torch.ones(3, 2, dtype=torch.long),
                         prompt_mask=torch.ones(3, 2), response_ids=torch.ones(R, 1, dtype=torch.long),
                         mask=torch.ones(R, 1), behaviour_logp=torch.zeros(R, 1), old_logp=torch.zeros(R, 1),
                         entropy=torch.zeros(R, 1), texts=texts, kind=torch.tensor([0, 0, 0, OFF_POLICY, 0, 0, 0]))
    kept, entropies = group_answer_entropies(batch, mix)
    assert [p.id for p in kept] == ["addition/0", "addition/1"]
    p = 2 / 3
    assert entropies == pytest.approx([-(p * math.log(p) + (1 - p) * math.log(1 - p)), 0.0])


def test_vector_is_the_hand_computed_entropy_weighted_combination():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    w = [0.0, 1.0, 3.0]
    # uncentred: (0*[1,0] + 1*[0,1] + 3*[2,2]) / 4
    assert torch.allclose(steering_vector(h, w, centre=False), torch.tensor([1.5, 1.75]))
    # centred on the plain mean [1, 1]: (1*[-1,0] + 3*[1,1]) / 4
    assert torch.allclose(steering_vector(h, w, centre=True), torch.tensor([0.5, 0.75]))
    assert steering_vector(h, [0.0, 0.0, 0.0]) is None  # unanimous everywhere: nothing to steer towards
    # equal entropies, centred: u is 0 but for rounding (its direction then depended on the order of the
    # sums, so one process and two steered along different noise); no direction, so None
    g = torch.Generator().manual_seed(0)
    many = torch.randn(64, 32, generator=g) * 3 + 1
    assert steering_vector(many, [1.386294] * 64) is None
    assert steering_vector(many, [1.386294] * 63 + [1.0]) is not None  # one group differs: a direction
    assert torch.allclose(steering_vector(many, [2.0] * 64, centre=False), many.double().mean(0).float())
    with pytest.raises(ValueError, match="2 entropies for 3 activations"):
        steering_vector(h, [1.0, 1.0])


class StubEngine:
    """What EAST asks of an engine: the layer count and fixed activations."""
    num_layers = 4
    supports_interventions = True

    def __init__(self, h):
        self.h, self.asked = h, []

    def prompt_activations(self, problems, layer):
        self.asked.append((len(problems), layer))
        return self.h[:len(problems)]


def test_east_scales_beta_to_the_residual_norm_and_steers_the_middle_layer():
    h = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])  # norms 5, 1, 10: r = 16/3
    east = EAST(beta=0.5)
    assert east._compute(StubEngine(h), problems(), [0.0, 1.0, 3.0], step=0)
    mean = h.mean(0)
    u = (1 * (h[1] - mean) + 3 * (h[2] - mean)) / 4
    assert torch.allclose(east.vector, u) and east.steer_layer == 2 and east.vector_step == 0
    assert east.residual_norm == pytest.approx(16 / 3)
    assert torch.allclose(east.added_vector(), 0.5 * (16 / 3) * u / u.norm())
    assert east.added_vector().norm().item() == pytest.approx(0.5 * 16 / 3)
    iv = east.intervention(step=1)
    assert iv.layer == 2 and torch.allclose(iv.vector, east.added_vector())
    raw = EAST(beta=0.5, scale="none", centre=False, layer=1)
    raw._compute(StubEngine(h), problems(), [0.0, 1.0, 3.0], step=0)
    assert torch.allclose(raw.added_vector(), 0.5 * (h[1] + 3 * h[2]) / 4) and raw.steer_layer == 1
    assert EAST().intervention(step=1) is None  # no vector yet: plain decoding
    with pytest.raises(ValueError, match="decoding east: layer 4 is past the model's 4 decoder layers"):
        EAST(layer=4)._compute(StubEngine(h), problems(), [0.0, 1.0, 3.0], step=0)


# ---- the intervention in the engine ---------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_beta_zero_samples_exactly_what_plain_decoding_samples(tiny_model, backend):
    model, tok = tiny_model
    engine = RolloutEngine(model, tok, backend)
    east = EAST(beta=0.0, layer=0)
    east._compute(StubEngine(torch.randn(3, 32, generator=torch.Generator().manual_seed(0))), problems(),
                  [0.5, 1.0, 0.0], step=0)
    assert east.vector.norm() > 0
    iv = east.intervention(step=1)
    counting = Counting(iv.layer, iv.vector, iv.positions)
    for seed, noise in [(5, None), (0, torch.rand(12, 6, generator=torch.Generator().manual_seed(1)))]:
        plain = engine.rollout(problems(), [4, 4, 4], [1.0] * 6, seed=seed, noise=noise)
        steered = engine.rollout(problems(), [4, 4, 4], [1.0] * 6, seed=seed, noise=noise, intervention=counting)
        assert torch.equal(plain.response_ids, steered.response_ids) and plain.texts == steered.texts
        assert torch.equal(plain.behaviour_logp, steered.behaviour_logp)
        assert torch.allclose(plain.old_logp, steered.old_logp, atol=1e-5)  # recomputed unsteered
        assert torch.allclose(plain.entropy, steered.entropy, atol=1e-5)
    assert counting.calls[True] > 0 and counting.calls[False] > 0  # the hook really ran, at β = 0


def steered_reference_logp(model, batch, layer, vector, first_steered):
    """log-probs of the batch's tokens from a plain Hugging Face forward over prompt + response
    with ``vector`` added to the output of ``layer`` at positions >= ``first_steered``."""
    def hook(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        out = out.clone()
        out[:, first_steered:] += vector
        return (out,) + output[1:] if isinstance(output, tuple) else out

    ids = torch.cat([batch.prompt_ids[batch.group], batch.response_ids], dim=1)
    mask = torch.cat([batch.prompt_mask[batch.group], torch.ones_like(batch.mask)], dim=1)
    positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
    handle = model.model.layers[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    finally:
        handle.remove()
    Lp = batch.prompt_ids.shape[1]
    logits = logits[:, Lp - 1: Lp - 1 + batch.response_ids.shape[1]]
    return torch.log_softmax(logits.float(), -1).gather(-1, batch.response_ids[..., None]).squeeze(-1) * batch.mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_behaviour_logp_is_the_steered_models_and_old_logp_the_unsteered(tiny_model, backend, positions):
    model, tok = tiny_model
    engine = RolloutEngine(model, tok, backend)
    model.eval()
    vector = 0.5 * direction()
    batch = engine.rollout(problems(), [4, 4, 4], [1.0] * 6, seed=2, intervention=AddVector(0, vector, positions))
    Lp = batch.prompt_ids.shape[1]
    steered = steered_reference_logp(model, batch, 0, vector, 0 if positions == "all" else Lp - 1)
    assert torch.allclose(batch.behaviour_logp, steered, atol=1e-5)
    with torch.no_grad():
        unsteered = engine.response_logits(batch)
    old = torch.log_softmax(unsteered.float(), -1).gather(-1, batch.response_ids[..., None]).squeeze(-1) * batch.mask
    assert torch.allclose(batch.old_logp, old, atol=1e-5)
    gap = ((batch.behaviour_logp - batch.old_logp).abs() * batch.mask).sum() / batch.mask.sum()
    assert gap > 0.05, "the steering changed nothing: the comparison tests nothing"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_hook_is_gone_after_sampling(tiny_model, backend):
    model, tok = tiny_model
    engine = RolloutEngine(model, tok, backend)
    batch = engine.rollout(problems(), [2, 2, 2], [1.0] * 6, seed=1)
    with torch.no_grad():
        before = engine.response_logits(batch)
    counting = Counting(1, 3.0 * direction())
    engine.rollout(problems(), [2, 2, 2], [1.0] * 6, seed=1, intervention=counting)
    calls = dict(counting.calls)
    with torch.no_grad():
        after = engine.response_logits(batch)
    engine.prompt_activations(problems(), 1)
    assert torch.equal(before, after) and counting.calls == calls
    assert all(not layer._forward_hooks for layer in model.model.layers)


def test_prompt_activations_are_the_layer_output_at_the_last_prompt_token_in_both_backends(tiny_model):
    model, tok = tiny_model
    fast, hf = RolloutEngine(model, tok, "fast"), RolloutEngine(model, tok, "hf")
    ids, mask = fast.encode_prompts(problems())
    positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():  # hidden_states[l + 1] is the output of decoder layer l (the last one is normed)
        hidden = model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
    expect = hidden.hidden_states[1][:, -1]
    assert torch.allclose(fast.prompt_activations(problems(), 0), expect, atol=1e-5)
    assert torch.allclose(hf.prompt_activations(problems(), 0), expect, atol=1e-5)
    assert torch.allclose(fast.prompt_activations(problems(), 1), hf.prompt_activations(problems(), 1), atol=1e-5)
    with pytest.raises(ValueError, match="layer 2: the model has 2 decoder layers"):
        fast.rollout(problems(), [1, 1, 1], [1.0] * 3, intervention=AddVector(2, direction()))


def test_the_vllm_engine_refuses_an_intervention():
    from explorl.policy.vllm_engine import VLLMEngine
    assert VLLMEngine.supports_interventions is False and RolloutEngine.supports_interventions is True
    with pytest.raises(ValueError, match="vllm cannot apply an activation intervention"):
        VLLMEngine.rollout(None, problems(), [1, 1, 1], [1.0], intervention=AddVector(0, direction()))


# ---- in the trainer ------------------------------------------------------------------------
EAST_SMALL = {"name": "east", "beta": 0.5, "refresh_every": 2, "calibration_problems": 8, "calibration_rollouts": 8,
              "temperature": 0.3}  # answers that repeat in some groups and not others: entropies that differ


def test_the_hook_acts_in_sampling_only_never_in_the_update_or_evaluation(tiny_config, tmp_path, monkeypatch):
    import explorl.train.loop as loop
    from explorl.train.loop import Trainer
    calls, phase = [], ["sampling"]
    original = AddVector.__call__

    def spy(self, h, prompt):
        calls.append(phase[0])
        return original(self, h, prompt)

    def during(name, fn):
        def wrapped(*args, **kwargs):
            phase[0] = name
            try:
                return fn(*args, **kwargs)
            finally:
                phase[0] = "sampling"
        return wrapped

    monkeypatch.setattr(AddVector, "__call__", spy)
    monkeypatch.setattr(loop, "optimise", during("update", loop.optimise))
    monkeypatch.setattr(loop, "evaluate", during("evaluation", loop.evaluate))
    monkeypatch.setattr(loop, "recompute_old_logp", during("update", loop.recompute_old_logp))
    cfg = tiny_config(recipe="east", decoding=EAST_SMALL,
                      train={"steps": 2, "recompute_old_logp": True, "rollouts_per_problem": 8})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "run")
    assert calls and set(calls) == {"sampling"}
    assert all(r["decode/steer_norm"] == pytest.approx(0.5 * r["decode/residual_norm"], rel=1e-5)  # logged to 6 decimals
               for r in rows)
    assert all(r["decode/logp_gap"] != 0 and "loss/tis_weight_mean" in r for r in rows)
    assert rows[1]["decode/refreshed"] == 1.0 and rows[1]["decode/u_step"] == 2
    assert rows[-1]["tokens/total"] == sum(r["tokens/step"] for r in rows)  # calibration tokens counted


def test_east_state_resumes_exactly(tiny_config, tmp_path):
    cfg = tiny_config(recipe="east", decoding={**EAST_SMALL, "refresh_every": 3}, train={"steps": 4})
    full, part = unbroken_and_resumed(cfg, tmp_path, stop_after=2)
    assert full == part
    assert [r["decode/u_step"] for r in full] == [0, 0, 3, 3]


def test_east_state_round_trips_through_a_checkpoint():
    from explorl.train.checkpoint import decode_state, encode_state
    a = EAST(beta=1.5)
    h = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    a._compute(StubEngine(h), problems(), [1.0, 0.0, 2.0], step=4)
    a.window = [[problems()[0], 0.7]]
    b = EAST(beta=1.5)
    b.load_state_dict(decode_state(encode_state(a.state_dict())))
    assert torch.equal(b.added_vector(), a.added_vector()) and b.steer_layer == a.steer_layer == 2
    assert b.vector_step == 4 and b.window == a.window and b.residual_norm == a.residual_norm


# ---- the effect on the testbed --------------------------------------------------------------
@pytest.mark.slow
def test_positive_beta_raises_the_answer_entropy_of_the_warm_started_testbed_model():
    """u from one calibration set (64 training problems), the answer entropy measured on another
    (the 160 held-out problems), 8 rollouts each at temperature 1 with the same noise: plain,
    steered along u, along -u and along random directions of the same norm (the entropy-weighted
    direction must do more than any push of that size); temperature 1.1 printed beside them."""
    from explorl.config import load_config
    from explorl.policy import load_policy
    cfg = load_config(recipe="east")
    model, tok = load_policy(cfg, log=lambda *_: None)
    engine = RolloutEngine(model, tok)
    tasks = TaskMix.from_config(cfg.tasks)
    rng = random.Random(0)
    calibration = [tasks.sample(rng) for _ in range(64)]
    G, max_new = 8, cfg.train.max_new_tokens
    east = EAST(**{k: v for k, v in cfg.decoding.items() if k != "name"})
    batch = engine.rollout(calibration, [G] * len(calibration), [1.0] * max_new, seed=0)
    assert east._compute(engine, *group_answer_entropies(batch, tasks), step=0)
    held_out = [p for ps in tasks.eval_sets(32).values() for p in ps]
    noise = torch.rand(G * len(held_out), max_new, generator=torch.Generator().manual_seed(1))
    v = east.added_vector()
    randoms = [torch.randn(v.shape, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    runs = [("plain", 1.0, None), ("u", 1.0, v), ("-u", 1.0, -v), ("temperature 1.1", 1.0 + 0.1, None)]
    runs += [(f"random {i}", 1.0, r * v.norm() / r.norm()) for i, r in enumerate(randoms)]
    entropy = {}
    for name, temperature, vector in runs:
        iv = None if vector is None else AddVector(east.steer_layer, vector, east.positions)
        out = engine.rollout(held_out, [G] * len(held_out), [temperature] * max_new, noise=noise, intervention=iv)
        entropies = group_answer_entropies(out, tasks)[1]
        solved = sum(tasks.verify(held_out[g], t) for g, t in zip(out.group.tolist(), out.texts)) / out.size
        entropy[name] = sum(entropies) / len(entropies)
        print(f"{name} (beta {east.beta}): answer entropy {entropy[name]:.3f}, mean reward {solved:.3f}")
    assert entropy["u"] > entropy["plain"] + 0.05
    assert entropy["u"] > entropy["-u"]
    assert entropy["u"] > max(entropy[f"random {i}"] for i in range(3))
