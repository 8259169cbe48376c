"""The testbed tokenizer's alphabet for the task mixes a run uses.

The testbed's character tokenizer has one token per character of its alphabet. A mix whose
prompts and answers use only ``ALPHABET`` gets exactly ``ALPHABET``, so the default testbed's
token ids, model and warm start stay as they are. A mix that uses any other character (the
upper case, punctuation and newlines of reasoning-gym prompts) gets ``ALPHABET`` followed by
every other ASCII character, in code-point order: a sample of a generated source cannot show
that it never emits a rarer character, and a character missing from the vocabulary would be
dropped from the text without a word once the model is saved and reloaded.

Characters beyond ASCII are refused with an error that names the source, the problem and the
character: the tokenizer spells each character as one byte-level symbol, which exists for
ASCII only. Sources with such text need a model with its own tokenizer (``model.path``).
"""
from __future__ import annotations

from .encoding import _describe, _items

#: Every ASCII character (control characters included, so that a tab or a carriage return
#: in some prompt cannot fall outside the vocabulary).
ASCII = "".join(chr(c) for c in range(128))


def mix_alphabet(mixes, samples: int = 64, extra_text: str = "") -> str:
    """The alphabet for ``mixes`` (``TaskMix`` objects): ``ALPHABET`` if the text of every checked
    problem (the ones ``check_encodable`` checks: every row of a file, else ``samples`` training
    problems, the top of each difficulty range and ``samples`` held-out ones; context, prompt,
    answer and the reference completion) and ``extra_text`` (a prompt template) use only it, else ``ALPHABET`` + the rest of ASCII. Raises ``ValueError``
    naming the source, problem and character for a character beyond ASCII."""
    from . import ALPHABET
    known, outside = set(ALPHABET), False
    for ch in extra_text:
        if ord(ch) > 127:
            raise ValueError(f"the prompt template has the character {_describe(ch)}, which is not ASCII; "
                             f"the testbed's character tokenizer spells ASCII only")
        outside = outside or ch not in known
    for mix in mixes:
        for name, source in mix.sources.items():
            for where, p in _items(name, source, samples):
                for ch in set(p.context + p.prompt + p.answer + source.reference_completion(p)) - known:
                    if ord(ch) > 127:
                        raise ValueError(f"task source {name!r}: {where}: the character {_describe(ch)} is not "
                                         f"ASCII; the testbed's character tokenizer spells ASCII only (use a "
                                         f"model with its own tokenizer, model.path, for this source)")
                    outside = True
    if not outside:
        return ALPHABET
    return ALPHABET + "".join(ch for ch in ASCII if ch not in known)
