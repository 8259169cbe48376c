"""Rollouts whose steps a ``ThinkingRule`` decides: per step and row, the token recorded, the
input fed back (a token's embedding or a soft token, ``explorl.policy.soft``) and how the
position's log-prob is defined.

``RolloutEngine.rollout(..., thinking=rule)`` comes here. The loop is the engine's (prompts
prefilled once per group, a preallocated KV cache on the fast path, finished rows dropped),
with the rule in place of ``sample_next_token``. A row ends at a stop token (EOS, end of
turn), whatever the position, or when the rule ends it. Positions the rule marks
``hidden_text`` (a thought that is not text: CoT2's continuous steps) are left out of the
completion the verifier reads; the batch carries the ``SoftInputs`` record (unless the rule
does not ``record`` it, as in evaluation) and a ``loss_mask`` without the ``UNSCORED``
positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from explorl.batch import RolloutBatch
from explorl.policy.sampling import sample_next_token
from explorl.policy.soft import TOKEN, UNSCORED, SoftInputs, mix_embeddings


@dataclass
class Choice:
    """One step of the active rows ``(Ra,)``: what a rule decided."""

    tokens: torch.Tensor            # (Ra,) the token recorded at this position (stop tokens end the row)
    behaviour_logp: torch.Tensor    # (Ra,) log-prob under what the step was drawn from
    old_logp: torch.Tensor          # (Ra,) log-prob under the policy's rule at temperature 1 (the PPO anchor)
    entropy: torch.Tensor           # (Ra,) entropy of softmax(z) at temperature 1
    rule: torch.Tensor              # (Ra,) int8: soft.TOKEN, MTS, DIRICHLET or UNSCORED
    fed: torch.Tensor | None = None       # (Ra,) bool: the input fed back is the mixture below
    ids: torch.Tensor | None = None       # (Ra, S) long (None: dense weights over the vocabulary)
    weights: torch.Tensor | None = None   # (Ra, S) float
    hidden_text: torch.Tensor | None = None  # (Ra,) bool: not part of the completion's text
    stop: torch.Tensor | None = None      # (Ra,) bool: the rule ends these rows after this position
    tag: torch.Tensor | None = None       # (Ra,) long: what the rule chose, for the method's own use (-1: none)


def token_choice(logits, temperature, top_p, generator, noise) -> Choice:
    """An ordinary step: one token sampled, its embedding fed back."""
    tok, lp_b, lp_1, ent = sample_next_token(logits, temperature, top_p, generator, noise)
    return Choice(tok, lp_b, lp_1, ent, torch.full_like(tok, TOKEN, dtype=torch.int8))


class ThinkingRule:
    """Decides each decoding step of a rollout. A rule may keep per-row state (``start`` resets
    it for ``rows`` rows of a rollout of at most ``max_new_tokens`` positions; ``keep`` drops
    finished rows, ``rows`` indexing the active ones).

    ``support``: entries stored per position (``None``: dense over the vocabulary).
    ``needs_hidden``: ``step`` receives the final hidden state ``(Ra, d)`` of the position whose
    logits it sees. ``record``: keep the soft-token record (training needs it; evaluation does not).
    ``params``: what the log-prob rules of its positions need (``SoftInputs.params``).
    """

    support: int | None = None
    needs_hidden: bool = False
    record: bool = True
    params: dict = {}

    def start(self, rows: int, engine, device, max_new_tokens: int) -> None:
        pass

    def step(self, t: int, logits: torch.Tensor, temperature: float, top_p: float, generator,
             noise: torch.Tensor | None, hidden: torch.Tensor | None) -> Choice:
        raise NotImplementedError

    def keep(self, rows: torch.Tensor) -> None:
        pass


@torch.no_grad()
def rollout_with_rule(engine, problems, counts, temperatures, top_p, seed, max_new_tokens, noise,
                      rule: ThinkingRule) -> RolloutBatch:
    max_new = max_new_tokens or len(temperatures)
    temps = [float(t) for t in temperatures[:max_new]]
    dev = engine.device
    gen = torch.Generator(device=dev).manual_seed(seed) if noise is None else None
    if noise is not None:
        noise = noise.to(dev)
    prompt_ids, prompt_mask = engine.encode_prompts(problems)
    group = torch.repeat_interleave(torch.arange(len(problems)), torch.tensor(counts)).to(dev)
    R = group.shape[0]
    was_training = engine.model.training
    engine.model.eval()
    embed = engine.model.get_input_embeddings()
    logits, state = engine.backend.start_decode(prompt_ids, prompt_mask, group, max_new, want_hidden=rule.needs_hidden)
    V = logits.shape[-1]
    S = V if rule.support is None else rule.support
    rule.start(R, engine, dev, max_new)
    out = {k: torch.zeros(R, max_new, dtype=d, device=dev) for k, d in
           [("ids", torch.long), ("b", torch.float32), ("o", torch.float32), ("h", torch.float32),
            ("rule", torch.int8), ("fed", torch.bool), ("hidden_text", torch.bool), ("tag", torch.long)]}
    out["ids"].fill_(engine.pad)
    out["tag"].fill_(-1)
    if rule.record:
        out["w"] = torch.zeros(R, max_new, S, device=dev)
        if rule.support is not None:
            out["wid"] = torch.zeros(R, max_new, S, dtype=torch.long, device=dev)
    stop_ids = engine.stop_ids.to(dev)
    lengths = torch.zeros(R, dtype=torch.long, device=dev)
    active = torch.arange(R, device=dev)
    running = torch.ones(R, dtype=torch.bool, device=dev)
    for t in range(max_new):
        c = rule.step(t, logits, temps[t], top_p, gen, None if noise is None else noise[active, t],
                      state.get("hidden"))
        fed = c.fed if c.fed is not None else torch.zeros_like(c.tokens, dtype=torch.bool)
        rows, on = active[running], running
        out["ids"][rows, t], out["b"][rows, t] = c.tokens[on], c.behaviour_logp[on]
        out["o"][rows, t], out["h"][rows, t], out["rule"][rows, t] = c.old_logp[on], c.entropy[on], c.rule[on]
        out["fed"][rows, t] = fed[on]
        if c.hidden_text is not None:
            out["hidden_text"][rows, t] = c.hidden_text[on]
        if c.tag is not None:
            out["tag"][rows, t] = c.tag[on]
        if rule.record and bool(fed.any()):
            out["w"][rows, t] = torch.where(fed[:, None], c.weights, 0.0)[on].to(out["w"].dtype)
            if "wid" in out:
                out["wid"][rows, t] = c.ids[on]
        lengths[rows] = t + 1
        running &= ~torch.isin(c.tokens, stop_ids)
        if c.stop is not None:
            running &= ~c.stop
        if t == max_new - 1 or not running.any():
            break
        tokens, ids, weights = c.tokens, c.ids, c.weights
        if running.float().mean() < 0.75:
            keep = running.nonzero().squeeze(-1)
            active, running, tokens, fed = active[keep], running[keep], tokens[keep], fed[keep]
            ids = None if ids is None else ids[keep]
            weights = None if weights is None else weights[keep]
            engine.backend.keep_rows(state, keep)
            rule.keep(keep)
        embeds = mix_embeddings(embed, tokens, fed, ids, weights) if bool(fed.any()) else None
        logits = engine.backend.decode_step(state, tokens, t, embeds)
    engine.model.train(was_training)
    out = {k: v.cpu() for k, v in out.items()}
    lengths = lengths.cpu()
    Lc = int(lengths.max())
    mask = (torch.arange(Lc)[None] < lengths[:, None]).float()
    ids = out["ids"][:, :Lc].masked_fill(mask == 0, engine.pad)
    shown = ids.masked_fill(torch.isin(ids, engine.stop_ids) | out["hidden_text"][:, :Lc], engine.pad)
    texts = engine.tokenizer.batch_decode(shown, skip_special_tokens=True)
    rule_codes = out["rule"][:, :Lc]
    soft = None
    if rule.record:
        soft = SoftInputs(out["fed"][:, :Lc] & (mask > 0), rule_codes.masked_fill(mask == 0, TOKEN),
                          out["w"][:, :Lc], out["wid"][:, :Lc] if "wid" in out else None, dict(rule.params),
                          out["tag"][:, :Lc].masked_fill(mask == 0, -1))
    scored = (rule_codes != UNSCORED).float() * mask
    return RolloutBatch(problems=list(problems), counts=list(counts), group=group.cpu(),
                         prompt_ids=prompt_ids.cpu(), prompt_mask=prompt_mask.cpu(), response_ids=ids, mask=mask,
                         behaviour_logp=out["b"][:, :Lc] * scored, old_logp=out["o"][:, :Lc] * scored,
                         entropy=out["h"][:, :Lc] * mask, texts=texts,
                         loss_mask=scored if bool((scored != mask).any()) else None, soft=soft)
