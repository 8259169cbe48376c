"""A saved model folder to point ``model.path`` at, made locally: a randomly initialised causal LM
of a ``transformers`` architecture and a byte-level BPE tokenizer trained on some text with
``tokenizers``, both written with ``save_pretrained``. Nothing is downloaded.

``explorl make-model --family gpt2 --out DIR`` calls ``build_random_model``. The tokenizer
is GPT-2's kind: byte-level, so any text encodes and decodes back; ``<|endoftext|>`` is its
begin, end and unknown token and there is no pad token (``load_pretrained`` pads with EOS,
as for GPT-2 itself). The model keeps the architecture's default dropout, as a released
checkpoint would (the trainer turns dropout off when it loads a policy).
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen2")
SPECIAL = "<|endoftext|>"
#: ChatML, the chat template of Qwen-style instruct models: turns between <|im_start|> and <|im_end|>
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]


def train_bpe_tokenizer(texts, vocab_size: int, chat: bool = False):
    """A byte-level BPE tokenizer with ``vocab_size`` tokens learned from ``texts`` (and, with
    ``chat``, ChatML's turn markers as special tokens and its chat template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = [SPECIAL] + (CHAT_TOKENS if chat else [])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(list(texts), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=SPECIAL, eos_token=SPECIAL,
                                        unk_token=SPECIAL, additional_special_tokens=specials[1:] or None)
    if chat:
        tokenizer.chat_template = CHATML
    return tokenizer


def task_texts(n: int = 2000, seed: int = 0) -> list[str]:
    """The default corpus: prompts and answers of ``n`` problems of the testbed's task mix, and
    math word problems with their worked solutions (``explorl make-data math``)."""
    from explorl.tasks import TESTBED_MIX, TaskMix
    from explorl.tasks.wordproblems import corpus
    mix, rng = TaskMix.from_config(TESTBED_MIX), random.Random(seed)
    return [p.context + p.prompt + p.answer for p in (mix.sample(rng) for _ in range(n))] + corpus(seed=seed)


def _config(family: str, vocab: int, hidden: int, layers: int, heads: int, positions: int, special: int):
    import transformers
    ids = {"vocab_size": vocab, "bos_token_id": special, "eos_token_id": special}
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions, **ids)
    common = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
              "intermediate_size": 4 * hidden, "max_position_embeddings": positions, **ids}
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(**common)
    cls = transformers.LlamaConfig if family == "llama" else transformers.Qwen2Config
    return cls(num_key_value_heads=heads, tie_word_embeddings=True, **common)


def build_random_model(family: str, out_dir: str | Path, texts=None, vocab_size: int = 512, hidden_size: int = 64,
                       layers: int = 2, heads: int = 4, max_positions: int = 512, seed: int = 0,
                       chat: bool = False) -> Path:
    """Write a random-init ``family`` model and a BPE tokenizer trained on ``texts`` (default:
    ``task_texts()``) to ``out_dir``; returns the folder. ``chat`` gives the tokenizer ChatML's
    chat template (``prompt.template: chat``). The same arguments give the same files."""
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    from transformers import AutoModelForCausalLM
    tokenizer = train_bpe_tokenizer(task_texts(seed=seed) if texts is None else texts, vocab_size, chat)
    config = _config(family, len(tokenizer), hidden_size, layers, heads, max_positions, tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
