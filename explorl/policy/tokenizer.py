"""A character-level tokenizer built locally with ``tokenizers``, wrapped as a fast tokenizer.

Every character of the alphabet is one token: a BPE model with no merges splits text into
characters. The vocabulary spells each character the way a byte-level BPE does (GPT-2's
byte-to-unicode table: printable ASCII stands for itself, the space is ``Ġ``), with a
byte-level pre-tokenizer and decoder around it. The testbed model is saved as a Qwen2
model, and ``AutoTokenizer`` reloads its tokenizer as ``Qwen2Tokenizer``, which rebuilds a
byte-level pipeline from the vocabulary alone: with the characters spelled literally, the
space became ``Ġ``, matched no token and was silently dropped. Spelled byte-level, the
tokenizer encodes the same ids before and after a save and reload. Token ids are those of
the alphabet's order either way. A character outside the alphabet encodes as ``<unk>``
(or, after a reload, as nothing): ``explorl.tasks.encoding.check_encodable`` catches it.
"""
from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"


@lru_cache(maxsize=1)
def _byte_symbols() -> dict[int, str]:
    """GPT-2's table from bytes to printable unicode symbols (what ByteLevel maps bytes to)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet`` (ASCII characters), after the four special tokens."""
    wide = sorted({ch for ch in alphabet if ord(ch) > 127})
    if wide:
        raise ValueError(f"build_char_tokenizer: only ASCII characters can be single tokens, "
                         f"got {''.join(wide)!r}")
    symbols = _byte_symbols()
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK])}
    for ch in alphabet:
        vocab.setdefault(symbols[ord(ch)], len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, bos_token=BOS,
                                   eos_token=EOS, unk_token=UNK, padding_side="left")


@lru_cache(maxsize=4)
def testbed_tokenizer(alphabet: str | None = None) -> PreTrainedTokenizerFast:
    """The testbed model's tokenizer for ``alphabet`` (default ``ALPHABET``; see
    ``explorl.tasks.alphabet``), built once per process and alphabet (for checks)."""
    from explorl.tasks import ALPHABET
    return build_char_tokenizer(ALPHABET if alphabet is None else alphabet)
