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


def _items(name: str, source, samples: int) -> Iterator[tuple[str, str, str]]:
    """``(where, prompt_text, answer)`` per problem to check: every row of a file-backed source
    (``rows`` of ``(lineno, prompt, answer)``), else ``samples`` training problems, problems at
    the top of every difficulty range, and ``samples`` held-out problems."""
    rows = getattr(source, "rows", None)
    if rows is not None:
        path = getattr(source, "path", name)
        for lineno, prompt, answer in rows:
            yield f"{path}:{lineno}", prompt, answer
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
        yield f"problem {p.id}", p.context + p.prompt, p.answer
    try:
        held_out = source.eval_set(samples, seed=0)
    except Exception as err:
        raise ValueError(f"task source {name!r}: generating its held-out set failed: "
                         f"{type(err).__name__}: {err}") from None
    for p in held_out:
        yield f"problem {p.id}", p.context + p.prompt, p.answer


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
                    *, limit_name: str = "max_position_embeddings") -> None:
    """Raise ``ValueError`` unless every checked problem of every source in ``tasks`` (a
    ``TaskMix``) encodes faithfully and fits the context.

    For each problem, the prompt as the engine encodes it (``context + prompt``, no special
    tokens) and the reference answer must decode back to themselves (special tokens
    skipped), and ``prompt tokens + max_new_tokens <= context_limit`` (skipped when
    ``context_limit`` is ``None``). File-backed sources (with ``rows``) are checked row by
    row and named by file and line; generated ones on ``samples`` training problems, a few
    at the top of each difficulty range and ``samples`` held-out problems, named by id.
    ``limit_name`` names where the context limit comes from, for the message.
    """
    for name, source in tasks.sources.items():
        for chunk in _chunks(_items(name, source, samples), _CHUNK):
            prompts = [prompt for _, prompt, _ in chunk]
            answers = [answer for _, _, answer in chunk]
            prompt_ids, answer_ids = _encode(tokenizer, prompts), _encode(tokenizer, answers)
            back_prompts = tokenizer.batch_decode(prompt_ids, skip_special_tokens=True)
            back_answers = tokenizer.batch_decode(answer_ids, skip_special_tokens=True)
            for (where, prompt, answer), ids, back_p, back_a in zip(chunk, prompt_ids, back_prompts, back_answers):
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
