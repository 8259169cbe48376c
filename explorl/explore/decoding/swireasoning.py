"""SwiReasoning: switch between latent and explicit thinking by block-wise entropy trends.

"SwiReasoning: Switch-Thinking in Latent and Explicit for Pareto-Superior Reasoning LLMs",
arXiv:2510.05069; code github.com/sdc17/SwiReasoning @ 7f3b278, ``generate_swir`` in
``generation_utils.py`` (lines 217-408), followed step by step. Training-free: each row
is in *latent* mode (it feeds back the probability-weighted mixture p^T E of the raw softmax,
no temperature or filter, lines 293-297 and 339) or *explicit* mode (it feeds the sampled
token's embedding). With H_t the entropy of the raw softmax (line 317):

- step 0: H_ref ← H_0, every row latent (line 258); the fed mixture is 0.9·p^T E + 0.1·E[first]
  (the code's line break, line 343);
- latent → explicit as soon as H_t < H_ref; explicit → latent when H_t > H_ref after at least
  ``window_size`` steps in explicit mode, unless the row has sampled the end-of-thinking token
  (which locks it explicit, line 303). A switch sets H_ref ← H_t and restarts the dwell count
  (lines 318-331); the span between switches is a "block";
- on a switch to latent the fed input is α_t·p^T E + (1−α_t)·E[think]; on a switch to explicit,
  β_t·p^T E + (1−β_t)·E[end-think], with α_t = α_0 + (1−α_0)·t/T_max and β_t likewise from β_0,
  T_max the response budget (lines 341-351);
- tokens of ``explicit_symbols`` are fed as tokens even in latent mode (lines 333-335; the
  code's math symbols: digits, single letters, LaTeX operators, lines 108-132);
- switch cap C (``max_switch_count``, lines 353-370): each latent → explicit switch counts;
  on a switch with C ≤ count ≤ 2C the convergence text is injected token by token (in place
  of the samples), and past 2C the termination text, after which the row stops
  ``termination_max_tokens`` steps later (line 383). The sampled (or injected) id is recorded
  at every position, latent ones included (line 373), and a row ends at EOS.

The code samples with temperature, top-k, top-p and min-p (its run.py: 0.6, 20, 0.95);
here temperature and top-p come from this decoding, top-k is ``top_k`` (0: off), min-p is
not implemented.

**On the testbed** there are no ``<think>``/``</think>`` tokens. Its long-reasoning sources
(``addition_steps``, ``multiplication_steps``) write their working as steps ending in ``;``
and the answer after ``>``: ``>`` plays ``</think>`` (end of thinking; the convergence and
termination texts are ``>``, since the answer follows the mark directly), ``;`` (a new step
of working begins) plays ``<think>`` and the step-0 line break. With a model of its own
(``model.path``) set ``think_token: "<think>"``, ``end_think_token: "</think>"``,
``first_token`` to its line break token, and the texts to the code's ``</think>`` and
``</think>\\n\\nThe final answer is``. Each marker must be one token (checked).
``window_size`` is the code's 512; testbed responses are tens of tokens long, so its recipe
uses a few. ``explicit_symbols: authors`` uses the code's list; on a character-level model
nearly every token is such a symbol, so the testbed default is ``none``.

**In RL**: latent positions (and injected tokens) are not samples of the policy: they are
``UNSCORED`` (no log-prob, left out of the loss through the batch's loss mask) and counted in
``decode/unscored_frac``; explicit tokens keep their log-probs, conditioned on the inputs
actually fed (the training forward feeds the same mixtures). The rollouts are therefore not
on-policy as wholes; the flag is the ``SoftInputs`` record with its ``UNSCORED`` positions,
not the row kind (the row kind would hand the rows to a guidance method's loss). Its main
use is evaluation: ``explorl eval RUN --decoding swireasoning``, or this recipe, whose start
and end evaluations use it.
"""
from __future__ import annotations

import torch

from explorl.explore.acted import SOFT_TOKENS_FED
from explorl.explore.base import Decoding
from explorl.policy.sampling import sample_next_token, token_logp_entropy
from explorl.policy.soft import TOKEN, UNSCORED, soft_metrics
from explorl.policy.soft_decode import Choice, ThinkingRule
from explorl.registry import register

#: generation_utils.py lines 108-128: the symbols fed explicitly even in latent mode (with 0-9, a-z, A-Z)
MATH_SYMBOLS = [
    "+", "-", "*", "/", "^", "=", "<", ">", "\\leq", "\\geq", "\\neq", "\\approx", "\\sim", "\\equiv", "\\to",
    "\\implies", "\\iff", "(", ")", "[", "]", "{", "}", "\\left(", "\\right)", "\\left[", "\\right]", "\\left\\{",
    "\\right\\}", "\\begin{pmatrix}", "\\end{pmatrix}", "\\frac", "\\dfrac", "\\sqrt", "\\sqrt[]", "\\in",
    "\\notin", "\\subset", "\\supset", "\\subseteq", "\\supseteq", "\\cup", "\\cap", "\\emptyset", "\\varnothing",
    "\\pi", "\\theta", "\\alpha", "\\beta", "\\gamma", "\\delta", "\\epsilon", "\\zeta", "\\lambda", "\\mu", "\\nu",
    "\\sin", "\\cos", "\\tan", "\\arcsin", "\\arccos", "\\arctan", "\\log", "\\ln", "\\exp", "_", "\\binom",
    "\\choose", "\\cdot", "\\dots", "\\ldots", "\\cdots", "\\vdots", "\\ddots", "\\mathbb", "\\mathbf", "\\mathrm",
    "\\text", "\\mbox", "\\infty", "\\circ", "\\prime", "\\ast", "\\star", "\\triangle", "\\triangleleft",
    "\\triangleright", "\\perp", "\\parallel", "\\angle", "\\boxed", "\\overline", "\\underline", "\\lceil",
    "\\rceil", "\\lfloor", "\\rfloor", "\\left", "\\right", "\\mid", "|", "\\vert", "\\Vert", "\\because",
    "\\therefore", "\\forall", "\\exists", "\\wedge", "\\vee", "\\neg", "\\sum", "\\prod", "\\int", "\\lim",
    "\\min", "\\max", "\\arg", "\\deg", "\\gcd", "\\operatorname", "\\cot", "\\cotg", "\\sec", "\\csc",
] + [chr(c) for c in range(ord("0"), ord("9") + 1)] + [chr(c) for c in range(ord("a"), ord("z") + 1)] \
    + [chr(c) for c in range(ord("A"), ord("Z") + 1)]

LATENT, EXPLICIT = 0, 1


def raw_entropy(probs: torch.Tensor) -> torch.Tensor:
    """H of the raw softmax, as the code computes it (line 317)."""
    return -(probs * probs.clamp(min=1e-12).log()).sum(-1)


def one_token(tokenizer, text: str, what: str) -> int:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"decoding swireasoning: {what} {text!r} must be one token of this tokenizer, it is "
                         f"{len(ids)} ({ids})")
    return ids[0]


class SwitchState:
    """The per-row state of ``generate_swir``: mode, H_ref, dwell count, the end-of-thinking lock,
    the switch count, the injection queue and the answer budget."""

    def __init__(self, rows: int, device):
        self.mode = torch.full((rows,), LATENT, dtype=torch.long, device=device)
        self.stay = torch.zeros(rows, dtype=torch.long, device=device)
        self.ref = torch.zeros(rows, device=device)
        self.locked = torch.zeros(rows, dtype=torch.bool, device=device)
        self.switches = torch.zeros(rows, dtype=torch.long, device=device)
        self.injecting = torch.zeros(rows, dtype=torch.bool, device=device)
        self.queues = [[] for _ in range(rows)]
        self.budget = torch.full((rows,), -1, dtype=torch.long, device=device)

    def keep(self, rows):
        for name in ("mode", "stay", "ref", "locked", "switches", "injecting", "budget"):
            setattr(self, name, getattr(self, name)[rows])
        self.queues = [self.queues[i] for i in rows.tolist()]

    def switch(self, t: int, entropy: torch.Tensor, window: int):
        """Lines 318-331: the rows switching to explicit and to latent at step ``t``."""
        if t == 0:
            self.ref = entropy.clone()
            none = torch.zeros_like(self.locked)
            return none, none
        self.stay += 1
        to_explicit = (self.mode == LATENT) & (entropy < self.ref)
        to_latent = (self.mode == EXPLICIT) & (entropy > self.ref) & (self.stay >= window) & ~self.locked
        self.mode[to_explicit] = EXPLICIT
        self.mode[to_latent] = LATENT
        switched = to_explicit | to_latent
        self.stay[switched] = 0
        self.ref[switched] = entropy[switched]
        self.switches += to_explicit.long()
        return to_explicit, to_latent

    def inject(self, tokens: torch.Tensor) -> torch.Tensor:
        """Lines 305-315: the next queued token in place of the sample; returns the forced rows."""
        forced = torch.tensor([bool(self.injecting[i]) and len(q) > 0 for i, q in enumerate(self.queues)],
                              dtype=torch.bool, device=tokens.device)
        for i in forced.nonzero().squeeze(-1).tolist():
            tokens[i] = self.queues[i].pop(0)
        done = torch.tensor([bool(self.injecting[i]) and len(q) == 0 for i, q in enumerate(self.queues)],
                            dtype=torch.bool, device=tokens.device)
        self.injecting &= ~done
        return forced

    def cap(self, to_explicit, cap: int, convergence: list[int], termination: list[int], answer_tokens: int):
        """Lines 353-370: queue the convergence text, or past 2C the termination text and the budget."""
        converge = (self.switches >= cap) & (self.switches <= 2 * cap) & to_explicit
        terminate = (self.switches > 2 * cap) & to_explicit
        for i in converge.nonzero().squeeze(-1).tolist():
            self.queues[i] = list(convergence)
        for i in terminate.nonzero().squeeze(-1).tolist():
            self.queues[i] = list(termination)
        self.injecting |= converge | terminate
        self.budget[terminate] = answer_tokens
        self.budget = torch.where(self.budget >= 0, self.budget - 1, self.budget)


class SwitchThinking(ThinkingRule):
    def __init__(self, d: "SwiReasoning", record: bool = True):
        self.d, self.record = d, record

    def start(self, rows, engine, device, max_new_tokens):
        d, tok = self.d, engine.tokenizer
        self.think = one_token(tok, d.think_token, "think_token")
        self.end_think = one_token(tok, d.end_think_token, "end_think_token")
        self.first = one_token(tok, d.first_token, "first_token")
        self.convergence = tok(d.convergence_text, add_special_tokens=False).input_ids
        self.termination = tok(d.termination_text, add_special_tokens=False).input_ids
        symbols = MATH_SYMBOLS if d.explicit_symbols == "authors" else []
        self.explicit_ids = torch.tensor(sorted({i for s in symbols for i in tok(s, add_special_tokens=False).input_ids}),
                                         dtype=torch.long, device=device)
        self.max_new = max_new_tokens
        self.state = SwitchState(rows, device)

    def keep(self, rows):
        self.state.keep(rows)

    def step(self, t, logits, temperature, top_p, generator, noise, hidden):
        d, s = self.d, self.state
        raw = logits.float()
        probs = torch.softmax(raw, -1)
        filtered = raw
        if d.top_k > 0 and d.top_k < raw.shape[-1]:
            kth = raw.topk(d.top_k, -1).values[:, -1:]
            filtered = raw.masked_fill(raw < kth, float("-inf"))
        tokens, behaviour, _, _ = sample_next_token(filtered, temperature, top_p, generator, noise)
        s.locked |= tokens == self.end_think
        forced = s.inject(tokens) if d.max_switch_count is not None else torch.zeros_like(s.locked)
        entropy = raw_entropy(probs)
        to_explicit, to_latent = s.switch(t, entropy, d.window_size)
        explicit = (s.mode == EXPLICIT) | s.locked
        if self.explicit_ids.numel():
            explicit |= torch.isin(tokens, self.explicit_ids)
        latent = ~explicit
        onehot = lambda i: torch.nn.functional.one_hot(torch.full_like(tokens, i), probs.shape[-1]).float()  # noqa: E731
        alpha = d.alpha_0 + (1 - d.alpha_0) * t / self.max_new
        beta = d.beta_0 + (1 - d.beta_0) * t / self.max_new
        soft = probs
        if t == 0:
            soft = 0.9 * soft + 0.1 * onehot(self.first)
        else:
            soft = torch.where(to_latent[:, None], alpha * soft + (1 - alpha) * onehot(self.think), soft)
        weights = torch.where(latent[:, None], soft,
                              beta * soft + (1 - beta) * onehot(self.end_think))  # the explicit rows fed: switches
        fed = latent | (to_explicit & ~latent)
        if d.max_switch_count is not None and t > 0:
            s.cap(to_explicit, d.max_switch_count, self.convergence, self.termination, d.termination_max_tokens)
        stop = s.budget == 0 if d.max_switch_count is not None else None
        old, entropy_t1 = token_logp_entropy(raw, tokens, True)
        unscored = latent | forced
        rule = torch.where(unscored, torch.full_like(tokens, UNSCORED), torch.full_like(tokens, TOKEN)).to(torch.int8)
        return Choice(tokens, behaviour, old, entropy_t1, rule, fed=fed, weights=weights, stop=stop)


@register("decoding", "swireasoning", paper="SwiReasoning, latent/explicit switch-thinking (arXiv:2510.05069)")
class SwiReasoning(Decoding):
    engaged_when = (SOFT_TOKENS_FED,)

    def __init__(self, alpha_0: float = 1.0, beta_0: float = 0.7, window_size: int = 512,
                 max_switch_count: int | None = None, think_token: str = ";", end_think_token: str = ">",
                 first_token: str = ";", convergence_text: str = ">", termination_text: str = ">",
                 termination_max_tokens: int = 32, explicit_symbols: str = "none", temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0):
        if not (0 <= alpha_0 <= 1 and 0 <= beta_0 <= 1):
            raise ValueError("decoding swireasoning: alpha_0 and beta_0 must be in [0, 1]")
        if window_size < 0 or termination_max_tokens < 1 or top_k < 0:
            raise ValueError("decoding swireasoning: need window_size >= 0, termination_max_tokens >= 1, top_k >= 0")
        if max_switch_count is not None and max_switch_count < 1:
            raise ValueError(f"decoding swireasoning: max_switch_count must be >= 1 or null, got {max_switch_count}")
        if explicit_symbols not in ("none", "authors"):
            raise ValueError(f"decoding swireasoning: explicit_symbols must be none or authors, got {explicit_symbols!r}")
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError("decoding swireasoning: need temperature > 0 and top_p in (0, 1]")
        self.alpha_0, self.beta_0, self.window_size, self.max_switch_count = alpha_0, beta_0, window_size, max_switch_count
        self.think_token, self.end_think_token, self.first_token = think_token, end_think_token, first_token
        self.convergence_text, self.termination_text = convergence_text, termination_text
        self.termination_max_tokens, self.explicit_symbols = termination_max_tokens, explicit_symbols
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def temperatures(self, step, max_new_tokens):
        return torch.full((max_new_tokens,), float(self.temperature))

    def thinking(self, step, evaluating=False):
        return SwitchThinking(self, record=not evaluating)

    def observe(self, stats):
        return soft_metrics(stats.extras["batch"])
