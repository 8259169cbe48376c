"""How a task's text becomes the model's input (``prompt:`` in the config), and where generation stops.

``prompt.template``:
- ``raw``: the text as it is (the problem's ``context`` + ``prompt``), the testbed's default;
- ``chat``: one user turn (after ``prompt.system``, if set) through the tokenizer's chat
  template with the assistant's turn opened (``add_generation_prompt``); a tokenizer without
  a chat template is an error;
- any other string: a template in which ``{prompt}`` is replaced by the text (other braces are
  kept as they are, e.g. ``"{prompt}\\nPut the answer in \\\\boxed{}."``).

Generation stops at any of ``stop_token_ids``: the tokenizer's EOS, the chat template's
end-of-turn token, and the model's ``generation_config.eos_token_id`` (an id or a list).
"""
from __future__ import annotations

import warnings

TEMPLATES = ("raw", "chat")


def check_prompt_config(template, system) -> None:
    """The checks that need no tokenizer: what ``prompt.template`` and ``prompt.system`` may be."""
    if not isinstance(template, str) or not template:
        raise ValueError(f"prompt.template: expected raw, chat or a template with {{prompt}}, got {template!r}")
    if template not in TEMPLATES and "{prompt}" not in template:
        raise ValueError(f"prompt.template: {template!r} is neither raw nor chat, and has no {{prompt}} to put "
                         f"the task's text in")
    if system is not None and template != "chat":
        raise ValueError(f"prompt.system: a system prompt needs prompt.template: chat (it is {template!r})")


class PromptFormat:
    """Renders a problem as the text the model reads."""

    def __init__(self, template: str = "raw", system: str | None = None, tokenizer=None, model_name: str = "the model"):
        check_prompt_config(template, system)
        if template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"prompt.template: chat, but the tokenizer of {model_name} has no chat template; "
                             f"use raw or a template with {{prompt}}")
        self.template, self.system, self.tokenizer = template, system, tokenizer

    @classmethod
    def from_config(cls, prompt_cfg, tokenizer, model_name: str = "the model") -> "PromptFormat":
        return cls(prompt_cfg.template, prompt_cfg.system, tokenizer, model_name)

    @property
    def is_raw(self) -> bool:
        return self.template == "raw"

    def render(self, problem) -> str:
        text = problem.context + problem.prompt
        if self.template == "raw":
            return text
        if self.template != "chat":
            return self.template.replace("{prompt}", text)
        messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        messages.append({"role": "user", "content": text})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


RAW = PromptFormat()


def for_config(cfg, tokenizer) -> PromptFormat:
    """The prompt format of a run (``cfg.prompt``) for the policy's ``tokenizer``."""
    model = f"model.path={cfg.model.path!r}" if cfg.model.path else "the testbed model"
    return PromptFormat.from_config(cfg.prompt, tokenizer, model)

_MARK = "explorl-end-of-turn-probe"


def end_of_turn_id(tokenizer) -> int | None:
    """The special token a chat template puts after an assistant message (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``, ...), found by rendering one such turn: the first special
    token after the message, past whitespace. ``None`` without a chat template or such a token."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}]
    try:
        text = tokenizer.apply_chat_template(turn, tokenize=False)
    except Exception as err:  # jinja2 and the template's own raise_exception: any error type
        warnings.warn(f"the chat template cannot render a user turn followed by an assistant turn "
                      f"({type(err).__name__}: {err}); no end-of-turn token is added to the stop tokens, "
                      f"responses stop at EOS", stacklevel=2)
        return None
    at = text.rfind(_MARK)
    if at < 0:
        return None
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for token in tokenizer(text[at + len(_MARK):], add_special_tokens=False).input_ids:
        if token in special:
            return token
        if tokenizer.decode([token]).strip():
            return None
    return None


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a response: EOS, the end-of-turn token, the model's EOS ids."""
    ids = {tokenizer.eos_token_id, end_of_turn_id(tokenizer)}
    for config in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(config, "eos_token_id", None)
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return sorted(i for i in ids if isinstance(i, int))
