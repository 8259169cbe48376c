"""Prompt formats (raw, chat template, format string) and the stop tokens: what the model reads,
where generation ends, and the checks that see the text as the model does."""
import pytest
import torch

from chat_model import chat_tokenizer, tiny_chat_model
from explorl.config import load_config
from explorl.policy import engine as engine_module
from explorl.policy.engine import RolloutEngine
from explorl.policy.prompts import PromptFormat, end_of_turn_id, stop_token_ids
from explorl.policy.tokenizer import build_char_tokenizer
from explorl.policy.warmup import _sft_batch
from explorl.tasks import ALPHABET, Problem, TaskMix, TaskSource
from explorl.tasks.encoding import check_encodable

QUESTION = "Betty needs $100 and has half. How much more?"


def problem(prompt=QUESTION, answer="50", context=""):
    return Problem(id="p", prompt=prompt, answer=answer, source="s", context=context)


def test_raw_and_format_string():
    assert PromptFormat().render(problem(context="Q: 1+1=2\n")) == "Q: 1+1=2\n" + QUESTION
    fmt = PromptFormat("Question: {prompt}\nPut the answer in \\boxed{}.")
    assert fmt.render(problem()) == f"Question: {QUESTION}\nPut the answer in \\boxed{{}}."


def test_chat_template_is_applied():
    tok = chat_tokenizer()
    text = PromptFormat("chat", "Solve it.", tok).render(problem())
    assert text == (f"<|im_start|>system\nSolve it.<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n"
                    f"<|im_start|>assistant\n")
    assert PromptFormat("chat", None, tok).render(problem()).startswith("<|im_start|>user\n")
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # the special tokens are single tokens


def test_prompt_errors_name_the_key_and_the_model():
    with pytest.raises(ValueError, match=r"prompt.template: chat, but the tokenizer of model.path='m' has no chat"):
        PromptFormat("chat", None, build_char_tokenizer(ALPHABET), "model.path='m'")
    with pytest.raises(ValueError, match=r"prompt.system: a system prompt needs prompt.template: chat"):
        PromptFormat("{prompt}", "Be brief.")
    with pytest.raises(ValueError, match=r"prompt.template: 'Answer:' is neither raw nor chat, and has no \{prompt\}"):
        PromptFormat("Answer:")
    with pytest.raises(ValueError, match=r"prompt.template: chat, but the tokenizer of the testbed model has no"):
        load_config(overrides=["prompt.template=chat"])
    with pytest.raises(ValueError, match=r"prompt.system: a system prompt needs prompt.template: chat"):
        load_config(overrides=["prompt.system=hi"])


def test_stop_tokens():
    tok = chat_tokenizer()
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|eot|>")
    assert end_of_turn_id(tok) == im_end
    assert end_of_turn_id(build_char_tokenizer(ALPHABET)) is None  # no chat template
    model = tiny_chat_model(tok)
    model.generation_config.eos_token_id = [tok.eos_token_id, eot]
    assert stop_token_ids(tok, model) == sorted({tok.eos_token_id, im_end, eot})
    model.generation_config.eos_token_id = eot
    assert eot in stop_token_ids(tok, model)


def test_a_template_that_cannot_render_a_turn_is_reported():
    import copy
    tok = copy.deepcopy(chat_tokenizer())  # the helper's tokenizer is shared
    tok.chat_template = "{{ raise_exception('only system turns here') }}"
    with pytest.warns(UserWarning, match="only system turns here.*responses stop at EOS"):
        assert end_of_turn_id(tok) is None


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_rollout_stops_at_each_stop_token(backend, monkeypatch):
    """Every row emits ``a b <stop> c c ...``: the response ends with the stop token, included
    in its mask, and its text has neither the stop token nor anything after it."""
    tok = chat_tokenizer()
    model = tiny_chat_model(tok)
    eot = tok.convert_tokens_to_ids("<|eot|>")
    model.generation_config.eos_token_id = [tok.eos_token_id, eot]
    a, b, c = (tok.convert_tokens_to_ids(t) for t in ("a", "b", "c"))
    real = engine_module.sample_next_token
    for stop in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"), eot, None):
        script = [a, b, stop if stop is not None else c] + [c] * 5
        step = iter(range(100))

        def forced(logits, temperature, top_p, gen, noise=None):
            tokens, *rest = real(logits, temperature, top_p, gen, noise)
            return (torch.full_like(tokens, script[next(step)]), *rest)

        monkeypatch.setattr(engine_module, "sample_next_token", forced)
        engine = RolloutEngine(model, tok, backend, PromptFormat("chat", None, tok))
        batch = engine.rollout([problem(), problem("Tom eats 2 of 8 slices.")], [2, 1], [1.0] * 8, seed=0)
        if stop is None:  # no stop token: the response runs to the length limit
            assert batch.lengths.tolist() == [8.0] * 3
            continue
        assert batch.lengths.tolist() == [3.0] * 3
        assert batch.response_ids[:, 2].tolist() == [stop] * 3 and batch.mask.sum().item() == 9
        assert batch.texts == ["ab"] * 3


def test_engine_encodes_the_rendered_prompt():
    tok = chat_tokenizer()
    fmt = PromptFormat("chat", "Solve it.", tok)
    engine = RolloutEngine(tiny_chat_model(tok), tok, "auto", fmt)
    ids, mask = engine.encode_prompts([problem()])
    assert ids[0][mask[0].bool()].tolist() == tok(fmt.render(problem()), add_special_tokens=False).input_ids


class _Words(TaskSource):
    name = "words"
    param_ranges = {"n": (1, 1)}

    def generate(self, rng, params):
        return QUESTION, "50"

    def score(self, problem, completion):
        return float(completion.strip() == problem.answer)


def test_check_encodable_sees_the_rendered_prompt():
    tok = chat_tokenizer()
    mix = TaskMix({"words": _Words()})
    check_encodable(mix, tok, 256, 8, samples=2, prompt_format=PromptFormat("chat", "Solve it.", tok))
    raw_tokens = len(tok(QUESTION, add_special_tokens=False).input_ids)
    check_encodable(mix, tok, raw_tokens + 8, 8, samples=2)  # the raw prompt fits ...
    with pytest.raises(ValueError, match=r"task source 'words': problem words/.*the prompt is \d+ tokens"):
        check_encodable(mix, tok, raw_tokens + 8, 8, samples=2,  # ... the chat-rendered one does not
                        prompt_format=PromptFormat("chat", "Solve it.", tok))
    char = build_char_tokenizer(ALPHABET + "BTH$.?")
    with pytest.raises(ValueError, match=r"the prompt has characters the tokenizer cannot encode: '\\n'"):
        check_encodable(mix, char, None, 8, samples=2, prompt_format=PromptFormat("{prompt}\nAnswer:"))


def test_warmup_batch_renders_a_template():
    tok = build_char_tokenizer(ALPHABET)
    p = problem("12+3=", "15")
    raw_ids, _ = _sft_batch(tok, [p])
    ids, labels = _sft_batch(tok, [p], None, PromptFormat("q:{prompt}"))
    assert ids[0].tolist() == tok("q:12+3=", add_special_tokens=False).input_ids + raw_ids[0, 5:].tolist()
    assert (labels[0] != -100).sum() == 3  # the answer and EOS only
