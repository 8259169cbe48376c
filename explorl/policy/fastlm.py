"""A lean forward pass for Llama-family decoders (Llama, Qwen2, Mistral) over the HF weights.

The Hugging Face module stays the model of record (optimizer, ``save_pretrained``); this file
only re-reads its parameters so that RL's two hot paths avoid work the generic forward does:

- sampling: each distinct prompt is prefilled once and its KV cache shared by every rollout
  of its group; decoding writes into a preallocated cache and drops finished rows;
- training: the prompt is run once per group and the G responses attend to its keys and
  values, so prompt tokens are not recomputed G times (gradients flow through both).

It calls the model's projection, embedding and output modules (``q_proj(x)``, ``lm_head(h)``)
and reads only the norm weights directly. LoRA layers that peft puts in place of those
modules therefore run here as in the HF forward, merge-free, and ``disable_adapter()``
switches them off here too; ``supports`` refuses an adapter on any other module. With
gradient checkpointing on, each layer of the training forward is recomputed in the backward
pass, as the HF layers are.

``tests/test_engine.py`` checks logits and gradients against the HF forward
(``tests/test_lora.py`` with adapters, ``tests/test_micro_batch.py`` with checkpointing).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from explorl.policy.intervention import check_layer
from explorl.policy.model import gradient_checkpointing, unwrap

SUPPORTED = {"llama", "qwen2", "mistral"}
#: The modules this file calls (so an adapter peft puts in their place takes part).
CALLED = {"embed_tokens", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}


def why_not(model) -> str | None:
    """``None`` if the fast path computes exactly what ``model``'s own forward does, else why not."""
    hf = unwrap(model)
    cfg = hf.config
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if cfg.model_type not in SUPPORTED:
        return f"model_type {cfg.model_type!r} is not one of {', '.join(sorted(SUPPORTED))}"
    if rope.get("rope_type", rope.get("type", "default")) != "default" or getattr(cfg, "hidden_act", "silu") != "silu":
        return "only default rotary embeddings and SiLU MLPs are implemented"
    adapted = {name.rsplit(".", 1)[-1] for name, module in hf.named_modules() if hasattr(module, "base_layer")}
    if adapted - CALLED:  # peft tuner layers keep the module they adapt as ``base_layer``
        return (f"it reads the weights of {', '.join(sorted(adapted - CALLED))} directly, so the adapters "
                f"there would be bypassed (adapters on {', '.join(sorted(CALLED))} are supported)")
    return None


def supports(model) -> bool:
    return why_not(model) is None


class FastLM:
    def __init__(self, model):
        reason = why_not(model)
        if reason is not None:
            raise ValueError(f"the fast path (model.backend: fast) cannot run this model: {reason}; "
                             f"use model.backend: auto or hf")
        model = unwrap(model)
        cfg = model.config
        self.model = model
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        rope = getattr(cfg, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        self._inv_freq_on = {}  # device -> inv_freq there (no host-to-device copy per layer and step)
        self.eps = cfg.rms_norm_eps
        self._checkpointing = False  # set per training forward (gradient checkpointing on the model)
        self._intervention = None  # an activation intervention, installed while the engine samples

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @contextmanager
    def intervene(self, intervention):
        """Apply ``intervention`` (``explorl.policy.intervention``) in ``prefill`` and ``decode_step``
        inside the block; nothing changes with ``None``."""
        if intervention is not None:
            check_layer(intervention, self.num_layers)
        self._intervention = intervention
        try:
            yield
        finally:
            self._intervention = None

    def _steer(self, i, h, prompt):
        iv = self._intervention
        return h if iv is None or iv.layer != i else iv(h, prompt)

    # ---- building blocks -----------------------------------------------------------
    @property
    def layers(self):
        return self.model.model.layers

    def _norm(self, x, weight):
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)

    def _rope(self, x, positions):
        """Rotate ``x`` ``(B, H, T, D)`` by ``positions`` ``(B, T)`` (HF rotate_half convention)."""
        inv_freq = self._inv_freq_on.get(x.device)
        if inv_freq is None:
            inv_freq = self._inv_freq_on[x.device] = self.inv_freq.to(x.device)
        freqs = positions.to(torch.float32)[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _qkv(self, layer, h, positions):
        attn = layer.self_attn
        x = self._norm(h, layer.input_layernorm.weight)
        B, T, _ = x.shape
        q = attn.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        return self._rope(q, positions), self._rope(k, positions), v

    def _finish(self, layer, h, q, k, v, mask):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv != self.n_heads)
        B, _, T, _ = out.shape
        h = h + layer.self_attn.o_proj(out.transpose(1, 2).reshape(B, T, -1))
        mlp = layer.mlp
        x = self._norm(h, layer.post_attention_layernorm.weight)
        return h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))

    def _layer(self, layer, h, positions, mask, past=None):
        """One decoder layer over ``h``; ``past`` = the prompt's (K, V) to attend to as well.
        Returns the new ``h`` and this layer's own (K, V)."""
        q, k, v = self._qkv(layer, h, positions)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2))
        return self._finish(layer, h, q, keys, values, mask), k, v

    def _train_layer(self, *args):
        if self.model.training and torch.is_grad_enabled() and self._checkpointing:
            return checkpoint(self._layer, *args, use_reentrant=False)
        return self._layer(*args)

    def logits(self, h):
        return self.model.lm_head(self.final_hidden(h))

    def final_hidden(self, h):
        return self._norm(h, self.model.model.norm.weight)

    # ---- prompts ---------------------------------------------------------------------
    def prefill(self, ids, pad_mask):
        """Run left-padded prompts ``(P, Lp)``; returns last hidden ``(P, d)`` and per-layer (K, V)."""
        P, Lp = ids.shape
        positions = (pad_mask.long().cumsum(-1) - 1).clamp_min(0)
        causal = torch.ones(Lp, Lp, dtype=torch.bool, device=ids.device).tril()
        mask = causal[None, None] & pad_mask.bool()[:, None, None, :]
        mask = mask | torch.eye(Lp, dtype=torch.bool, device=ids.device)[None, None]  # pad rows attend to self
        h = self.model.model.embed_tokens(ids)
        kv = []
        for i, layer in enumerate(self.layers):
            h, k, v = self._train_layer(layer, h, positions, mask)
            h = self._steer(i, h, True)
            kv.append((k, v))
        return h[:, -1], kv

    def run_prompts(self, ids, pad_mask) -> None:
        """A forward over the prompts alone (what an installed intervention reads)."""
        self.prefill(ids, pad_mask)

    # ---- training forward --------------------------------------------------------------
    def response_logits(self, prompt_ids, prompt_mask, group, response_ids, return_hidden=False, soft=None):
        """Logits predicting each response token, ``(R, Lc, V)``, with gradient.

        ``group`` ``(R,)`` maps each response to its prompt row. Response token j is
        predicted from the position before it: the last prompt token for j = 0. ``soft``
        (``explorl.policy.soft.SoftInputs`` of these rows) puts the soft tokens fed while
        sampling in place of their positions' token embeddings.
        """
        self._checkpointing = gradient_checkpointing(self.model)
        last, kv = self.prefill(prompt_ids, prompt_mask)
        R, Lc = response_ids.shape
        Lp = prompt_ids.shape[1]
        plen = prompt_mask.long().sum(-1)[group]
        inputs = response_ids[:, :-1]
        T = inputs.shape[1]
        positions = plen[:, None] + torch.arange(T, device=inputs.device)[None]
        prompt_part = prompt_mask.bool()[group][:, None, None, :].expand(R, 1, T, Lp)
        causal = torch.ones(T, T, dtype=torch.bool, device=inputs.device).tril()[None, None].expand(R, 1, T, T)
        mask = torch.cat([prompt_part, causal], dim=-1)
        embed = self.model.model.embed_tokens
        h = embed(inputs) if soft is None else soft.input_embeddings(embed, inputs)
        for layer, (pk, pv) in zip(self.layers, kv):
            h = self._train_layer(layer, h, positions, mask, (pk[group], pv[group]))[0]
        hidden = torch.cat([last[group][:, None], h], dim=1)
        hidden = self.final_hidden(hidden)
        logits = self.model.lm_head(hidden)
        return (logits, hidden) if return_hidden else logits

    # ---- decoding ----------------------------------------------------------------------
    def start_decode(self, prompt_ids, prompt_mask, group, max_new_tokens, want_hidden=False):
        """Prefill unique prompts, broadcast their cache to rollouts; returns first logits and state
        (with ``want_hidden``, ``state["hidden"]`` is the final hidden state behind the logits)."""
        last, kv = self.prefill(prompt_ids, prompt_mask)
        R, Lp = group.shape[0], prompt_ids.shape[1]
        cache = []
        for k, v in kv:
            ck = k.new_zeros(R, self.n_kv, Lp + max_new_tokens, self.head_dim)
            cv = torch.zeros_like(ck)
            ck[:, :, :Lp] = k[group]
            cv[:, :, :Lp] = v[group]
            cache.append((ck, cv))
        key_mask = torch.zeros(R, Lp + max_new_tokens, dtype=torch.bool, device=prompt_ids.device)
        key_mask[:, :Lp] = prompt_mask.bool()[group]
        state = {"cache": cache, "key_mask": key_mask, "plen": prompt_mask.long().sum(-1)[group], "Lp": Lp}
        return self._next_logits(state, last[group], want_hidden), state

    def _next_logits(self, state, h, want_hidden):
        if not want_hidden:
            return self.logits(h)
        state["hidden"] = self.final_hidden(h)
        return self.model.lm_head(state["hidden"])

    def decode_step(self, state, tokens, t, embeds=None):
        """Feed response token ``t`` ``(Ra,)`` of each active row (or, with ``embeds`` ``(Ra, d)``,
        those input embeddings: soft tokens); returns next logits ``(Ra, V)``."""
        slot = state["Lp"] + t
        state["key_mask"][:, slot] = True
        positions = (state["plen"] + t)[:, None]
        mask = state["key_mask"][:, None, None, : slot + 1]
        h = self.model.model.embed_tokens(tokens[:, None]) if embeds is None else embeds[:, None]
        for i, (layer, (ck, cv)) in enumerate(zip(self.layers, state["cache"])):
            q, k, v = self._qkv(layer, h, positions)
            ck[:, :, slot] = k[:, :, 0]
            cv[:, :, slot] = v[:, :, 0]
            h = self._steer(i, self._finish(layer, h, q, ck[:, :, : slot + 1], cv[:, :, : slot + 1], mask), False)
        return self._next_logits(state, h[:, 0], "hidden" in state)

    @staticmethod
    def keep_rows(state, rows):
        """Drop finished rows from the decoding state (``rows`` indexes the active rows)."""
        if "hidden" in state:
            state["hidden"] = state["hidden"][rows]
        state["cache"] = [(k[rows], v[rows]) for k, v in state["cache"]]
        state["key_mask"] = state["key_mask"][rows]
        state["plen"] = state["plen"][rows]
