"""The vLLM rollout engine's own logic, on CPU: requests (a problem's rollout count as ``n``, the
stop ids, a position-dependent temperature through the logits processor, per-group seeds that do
not depend on the rank), the weights pushed after every optimizer step (LoRA merged, under the
names a checkpoint uses), behaviour log-probs taken from the sampler and π_old from the trainer's
forward, and the checks on what comes back.

vLLM itself needs a CUDA GPU: here a stand-in ``FakeLLM`` answers ``generate`` by sampling from
*its own copy* of the model, which only the engine's weight pushes update, the way vLLM holds
its own weights. The real engine is tested in ``tests/test_gpu.py`` where a GPU and vLLM are.
"""
import copy
import types

import pytest
import torch
from conftest import make_tiny_config

from explorl.config import validate
from explorl.policy.lora import add_lora
from explorl.policy.vllm_engine import (
    TEMPERATURES_KEY,
    VLLMEngine,
    group_seeds,
    make_position_processor,
    scale_by_position,
    vllm_weights,
)
from explorl.tasks import Problem

PROMPTS = ["12+3=", "9=", "sort:5432=", "rev:ab="]


def problems():
    return [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(PROMPTS)]


class _Loader:
    def __init__(self, model, llm):
        self.model, self.llm = model, llm

    def load_weights(self, weights):
        assert "weights" in self.llm.awake, "weights pushed into a sleeping vLLM"
        params = dict(self.model.named_parameters())
        for name, tensor in weights:
            params[name].data.copy_(tensor)  # a name the checkpoint does not use is a KeyError


class FakeLLM:
    """Answers ``generate`` as vLLM does (token ids, the sampled token's processed log-prob,
    ``finish_reason``), sampling from its own copy of the model."""

    def __init__(self, model, source=None, drop_stop_token=False):
        self.copy = copy.deepcopy(model).eval()
        for p in self.copy.parameters():
            p.data.zero_()  # it holds nothing of the policy until the engine pushes weights
        runner = types.SimpleNamespace(model=_Loader(self.copy, self))
        self.awake, self.events = {"weights", "kv_cache"}, []
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner)))
        self.source, self.drop_stop_token = source, drop_stop_token
        self.calls, self.stale_at_generate = [], []

    def reset_prefix_cache(self):
        pass

    def sleep(self, level):
        assert level == 2
        self.awake.clear()
        self.events.append("sleep")

    def wake_up(self, tags):
        self.awake.update(tags)
        self.events.append("wake " + "+".join(tags))

    @torch.no_grad()
    def generate(self, prompts, sampling_params, use_tqdm=False):
        assert self.awake == {"weights", "kv_cache"}, "generate on a sleeping vLLM"
        self.events.append("generate")
        if self.source is not None:  # how far its weights are from the trainer's when it samples
            own = dict(self.copy.named_parameters())
            self.stale_at_generate.append(max(float((p - own[n]).abs().max())
                                              for n, p in self.source.named_parameters()))
        self.calls.append(sampling_params)
        return [types.SimpleNamespace(outputs=[self._sample(p["prompt_token_ids"], sp, i) for i in range(sp.n)])
                for p, sp in zip(prompts, sampling_params)]

    def _sample(self, prompt, sp, i):
        gen = torch.Generator().manual_seed(sp.seed * 31 + i)
        processor = make_position_processor(sp)
        ids, logprobs, reason = [], [], "length"
        for _ in range(sp.max_tokens):
            logits = self.copy(input_ids=torch.tensor([prompt + ids])).logits[0, -1].float()
            logits = processor(ids, logits) if processor else logits / sp.temperature
            logp = torch.log_softmax(logits, -1)
            tok = int(torch.multinomial(logp.exp(), 1, generator=gen))
            ids.append(tok)
            logprobs.append({tok: types.SimpleNamespace(logprob=float(logp[tok]))})
            if tok in sp.stop_token_ids:
                reason = "stop"
                if self.drop_stop_token:
                    ids.pop()
                    logprobs.pop()
                break
        return types.SimpleNamespace(token_ids=ids, logprobs=logprobs, finish_reason=reason)


def engine_for(model, tok, llm):
    return VLLMEngine(model, tok, llm=llm, sampling_params=types.SimpleNamespace)


def test_a_rollout_samples_n_per_problem_and_takes_pi_old_from_the_trainer(tiny_model):
    model, tok = tiny_model
    llm = FakeLLM(model)
    engine = engine_for(model, tok, llm)
    batch = engine.rollout(problems(), [3, 1, 2, 2], [1.0] * 8, seed=5)
    (params,) = llm.calls
    assert [p.n for p in params] == [3, 1, 2, 2] and batch.counts == [3, 1, 2, 2]
    assert batch.group.tolist() == [0, 0, 0, 1, 2, 2, 3, 3]
    assert all(p.temperature == 1.0 and p.extra_args is None and p.logprobs == 0 for p in params)
    assert set(params[0].stop_token_ids) == set(engine.stop_ids.tolist())
    # the weights were pushed before sampling: at temperature 1 the sampler's log-probs are
    # the trainer's forward on the same tokens (the fake starts with zero weights)
    assert batch.behaviour_logp.abs().sum() > 0
    assert torch.allclose(batch.behaviour_logp, batch.old_logp, atol=1e-5)
    assert (batch.entropy * batch.mask).sum() > 0
    assert batch.texts == tok.batch_decode(batch.response_ids.masked_fill(
        torch.isin(batch.response_ids, engine.stop_ids), tok.pad_token_id), skip_special_tokens=True)


def test_a_position_dependent_temperature_goes_to_the_logits_processor(tiny_model):
    model, tok = tiny_model
    llm = FakeLLM(model)
    temps = [2.0, 1.5, 1.0, 0.7, 0.7, 0.7]
    batch = engine_for(model, tok, llm).rollout(problems(), [2, 2, 2, 2], temps, seed=0)
    params = llm.calls[0][0]
    assert params.temperature == 1.0 and params.extra_args == {TEMPERATURES_KEY: temps}
    # behaviour is the scaled distribution's log-prob; π_old (temperature 1) differs from it
    assert not torch.allclose(batch.behaviour_logp, batch.old_logp, atol=1e-3)
    logits = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(scale_by_position(temps, [], logits), logits / 2.0)
    assert torch.equal(scale_by_position(temps, [7, 7, 7], logits), logits / 0.7)
    assert torch.equal(scale_by_position(temps, [7] * 20, logits), logits / 0.7)  # past the end: the last
    assert make_position_processor(types.SimpleNamespace(extra_args=None)) is None


def test_weights_are_pushed_after_every_optimizer_step_of_a_run(tmp_path, tiny_config):
    from explorl.train.loop import Trainer
    cfg = tiny_config(train={"steps": 3})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    llm = FakeLLM(trainer.model, source=trainer.model)
    trainer.engine = engine_for(trainer.model, trainer.tokenizer, llm)
    trainer.engine.prompt_format = trainer.prompt_format
    trainer.train_engine = trainer.engine
    # alternate rewards within every group, so that every step has a gradient and moves the weights
    trainer.verifier.score = lambda probs, completions: ([float(i % 2) for i in range(len(completions))], [])
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    for _ in range(3):
        trainer.train_step()
    trainer.close()
    moved = max(float((p.detach() - start[n]).abs().max()) for n, p in trainer.model.named_parameters())
    assert moved > 0 and len(llm.stale_at_generate) >= 3
    assert max(llm.stale_at_generate) == 0.0  # every rollout sampled the weights of the latest update


def test_sleep_mode_frees_vllm_between_rollouts_and_pushes_the_weights_again(tiny_model):
    from explorl.config import VLLMOptions
    model, tok = tiny_model
    llm = FakeLLM(model)
    engine = VLLMEngine(model, tok, options=VLLMOptions(enable_sleep_mode=True), llm=llm,
                        sampling_params=types.SimpleNamespace)
    llm.sleep(2)
    engine.asleep, llm.events = True, []  # as started: asleep, holding no weights
    for seed in range(2):
        batch = engine.rollout(problems(), [2, 2, 2, 2], [1.0] * 8, seed=seed)
        assert torch.allclose(batch.behaviour_logp, batch.old_logp, atol=1e-5)
    assert llm.events == ["wake weights", "wake kv_cache", "generate", "sleep"] * 2
    assert engine.asleep and engine.stale


def test_lora_weights_are_merged_under_the_base_models_names(tiny_model):
    model, tok = tiny_model
    base = copy.deepcopy(model)
    lora = add_lora(copy.deepcopy(model), {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, seed=0)
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            p.data.normal_()  # peft starts B at zero: make the adapters change the model
    pushed = {n: t.clone() for n, t in vllm_weights(lora)}  # a tensor holds the merged value while yielded
    assert set(pushed) == {n for n, _ in base.named_parameters()}
    with torch.no_grad():
        lora.merge_adapter()
        merged = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p.clone()
                  for n, p in lora.named_parameters() if "lora_" not in n}
        lora.unmerge_adapter()
    assert all(torch.equal(pushed[n], merged[n]) for n in pushed)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(pushed[q], dict(base.named_parameters())[q])  # the adapters are in it
    # and a model loaded with them computes what the LoRA policy computes
    llm = FakeLLM(base)
    batch = engine_for(lora, tok, llm).rollout(problems(), [2, 2, 2, 2], [1.0] * 8, seed=1)
    assert torch.allclose(batch.behaviour_logp, batch.old_logp, atol=1e-4)


def test_group_seeds_follow_the_group_not_the_rank():
    counts = [3, 1, 2, 2]
    noise = torch.rand(8, 6, generator=torch.Generator().manual_seed(0))
    whole = group_seeds(0, counts, noise)
    assert len(set(whole)) == 4
    rank1 = group_seeds(0, counts[2:], noise[4:])  # groups 2 and 3 with their own rows
    assert rank1 == whole[2:]
    assert group_seeds(7, counts, None) != group_seeds(8, counts, None)


def test_scoring_in_parts_gives_the_batch_of_one_pass(tiny_model):
    model, tok = tiny_model
    one = engine_for(model, tok, FakeLLM(model)).rollout(problems(), [3, 1, 2, 2], [1.0] * 8, seed=2)
    parts = engine_for(model, tok, FakeLLM(model)).rollout(problems(), [3, 1, 2, 2], [1.0] * 8, seed=2, max_rows=3)
    assert one.texts == parts.texts
    width = one.old_logp.shape[1]
    assert torch.allclose(one.old_logp, parts.old_logp[:, :width], atol=1e-5)


def test_a_response_stopped_without_its_stop_token_is_an_error(tiny_model):
    model, tok = tiny_model
    engine = engine_for(model, tok, FakeLLM(model, drop_stop_token=True))
    with pytest.raises(RuntimeError, match="without its stop token"):
        for seed in range(20):  # until some response stops
            engine.rollout(problems(), [4, 4, 4, 4], [1.0] * 8, seed=seed)


def test_the_vllm_backend_is_refused_where_it_cannot_run():
    cfg = make_tiny_config(model={"backend": "vllm"})
    with pytest.raises(ValueError, match="model.backend: vllm"):
        validate(cfg)
    cfg = make_tiny_config(model={"backend": "vllm", "vllm": {"gpu_memory_utilization": 1.5}})
    with pytest.raises(ValueError, match="model.vllm.gpu_memory_utilization: must be <= 1"):
        validate(cfg)
    cfg = make_tiny_config(model={"backend": "vllm", "device": "cpu"})
    with pytest.raises(ValueError, match="model.device: cpu"):
        validate(cfg)
