"""A chat tokenizer and a tiny chat model built here (nothing from a hub): a byte-level BPE
trained on a few sentences, ChatML's ``<|im_start|>``/``<|im_end|>`` turns, and a Qwen2 model
from a ``transformers`` config sized to it."""
from functools import lru_cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>", "<|eot|>"]
SENTENCES = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "Betty is saving money for a new wallet which costs $100. How much more money does she need?",
    "The answer is \\boxed{72}. #### 72 <answer>10</answer> 1/2 = 0.5, so x = 3.",
    "You are a helpful assistant. Solve the problem and put the final answer in \\boxed{}.",
]


@lru_cache(maxsize=1)
def chat_tokenizer() -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(SENTENCES * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>", "<|eot|>"],
                                  padding_side="left")
    tok.chat_template = CHATML
    return tok


def tiny_chat_model(tokenizer, seed: int = 0):
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


def save_chat_model(folder) -> None:
    tokenizer = chat_tokenizer()
    tiny_chat_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
