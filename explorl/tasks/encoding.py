"""Check, before training, that a task mix's text survives the policy's tokenizer.

A tokenizer may map a character it has no token for to ``<unk>`` or drop it without a word
(a character-level vocabulary, a byte-level BPE without byte fallback), and a prompt may be
too long for the model's context once the response is added. Either way the run would train
on prompts the model never sees as written, or on answers it cannot produce; this finds the
first such problem and names it.
"""
from __future__ import annotations

import unicodedata
from collections.abc import Iterator

from .problem import Problem

#: Texts tokenized per call (file-backed sources may hold many rows).
_CHUNK = 256


def _describe(chars) -> str:
    def one(ch: str) -> str:
        name = unicodedata.name(ch, "")
        return f"{ch!r} (U+{ord(ch):04X}{' ' + name if name else ''})"
    return ", ".join(one(ch) for ch in chars)


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _lost_characters(tokenizer, text: str, back: str) -> str:
    """Which characters of ``text`` do not come back, for the message."""
    chars = sorted(set(text))
    ids = _encode(tokenizer, chars)
    bad = [ch for ch, i in zip(chars, ids) if tokenizer.decode(i, skip_special_tokens=True) != ch]
    if bad:
        return f"characters the tokenizer cannot encode: {_describe(bad)}"
    at = next((i for i, (a, b) in enumerate(zip(text, back)) if a != b), min(len(text), len(back)))
    return (f"text that does not survive encode/decode: {text[max(0, at - 10):at + 10]!r} "
            f"comes back as {back[max(0, at - 10):at + 10]!r}")


def _items(name: str, source, samples: int) -> Iterator[tuple[str, Problem]]:
    """``(where, problem)`` per problem to check: every row of a file-backed source (its
    ``row_problems()``), else ``samples`` training problems, problems at the top of every
    difficulty range, and ``samples`` held-out problems."""
    row_problems = getattr(source, "row_problems", None)
    if row_problems is not None:
        yield from row_problems()
        return
    hardest = {key: high for key, (_, high) in source.param_ranges.items()}
    plans = [(10**9 + i, None) for i in range(samples)]
    plans += [(10**9 + samples + i, hardest) for i in range(max(1, samples // 8))]
    for seed, params in plans:
        try:
            p = source.problem(seed, params)
        except Exception as err:  # a generator that fails on its own configured ranges
            raise ValueError(f"task source {name!r}: generating the problem of seed {seed}"
                             f"{f' at {params}' if params else ''} failed: {type(err).__name__}: {err}") from None
        yield f"problem {p.id}", p
    try:
        held_out = source.eval_set(samples, seed=0)
    except Exception as err:
        raise ValueError(f"task source {name!r}: generating its held-out set failed: "
                         f"{type(err).__name__}: {err}") from None
    for p in held_out:
        yield f"problem {p.id}", p


def _without_special(tokenizer, text: str) -> str:
    """``text`` without the special tokens written in it (a chat template's ``<|im_start|>``):
    what the decoded prompt is compared with."""
    for token in tokenizer.all_special_tokens + [t.content for t in tokenizer.added_tokens_decoder.values()
                                                 if t.special]:
        text = text.replace(token, "")
    return text


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def check_encodable(tasks, tokenizer, context_limit: int | None, max_new_tokens: int, samples: int = 64,
                    *, limit_name: str = "max_position_embeddings", prompt_format=None) -> None:
    """Raise ``ValueError`` unless every checked problem of every source in ``tasks`` (a
    ``TaskMix``) encodes faithfully and fits the context.

    For each problem, the prompt as the engine encodes it (``context + prompt`` rendered by
    ``prompt_format``, an ``explorl.policy.prompts.PromptFormat``, raw when ``None``; no
    special tokens added) and the reference answer as the verifier expects it written
    (``source.reference_completion``) must decode back to themselves (special tokens
    skipped; the special tokens a chat template adds are left out of the prompt's check), and
    ``prompt tokens + max_new_tokens <= context_limit`` (skipped when ``context_limit`` is
    ``None``). File-backed sources (with ``row_problems``) are checked row by row and named by
    file and line or row; generated ones on ``samples`` training problems, a few at the top of
    each difficulty range and ``samples`` held-out problems, named by id. ``limit_name`` names
    where the context limit comes from, for the message.
    """
    render = prompt_format.render if prompt_format is not None else (lambda p: p.context + p.prompt)
    for name, source in tasks.sources.items():
        for problems in _chunks(_items(name, source, samples), _CHUNK):
            chunk = [(where, render(p), source.reference_completion(p)) for where, p in problems]
            prompts = [prompt for _, prompt, _ in chunk]
            answers = [answer for _, _, answer in chunk]
            prompt_ids, answer_ids = _encode(tokenizer, prompts), _encode(tokenizer, answers)
            back_prompts = tokenizer.batch_decode(prompt_ids, skip_special_tokens=True)
            back_answers = tokenizer.batch_decode(answer_ids, skip_special_tokens=True)
            if prompt_format is not None and not prompt_format.is_raw:
                prompts = [_without_special(tokenizer, prompt) for prompt in prompts]
            for (where, _, answer), prompt, ids, back_p, back_a in zip(chunk, prompts, prompt_ids, back_prompts,
                                                                          back_answers):
                if back_p != prompt:
                    raise ValueError(f"task source {name!r}: {where}: the prompt has "
                                     f"{_lost_characters(tokenizer, prompt, back_p)}")
                if back_a != answer:
                    raise ValueError(f"task source {name!r}: {where}: the reference answer has "
                                     f"{_lost_characters(tokenizer, answer, back_a)}")
                if context_limit is not None and len(ids) + max_new_tokens > context_limit:
                    raise ValueError(f"task source {name!r}: {where}: the prompt is {len(ids)} tokens; with "
                                     f"train.max_new_tokens={max_new_tokens} that is {len(ids) + max_new_tokens}, "
                                     f"more than the model's context of {context_limit} positions ({limit_name})")
