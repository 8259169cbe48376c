"""A lean forward pass for Llama-family decoders (Llama, Qwen2, Mistral) over the HF weights.

The Hugging Face module stays the model of record (optimizer, ``save_pretrained``); this file
only re-reads its parameters so that RL's two hot paths avoid work the generic forward does:

- sampling: each distinct prompt is prefilled once and its KV cache shared by every rollout
  of its group; decoding writes into a preallocated cache and drops finished rows;
- training: the prompt is run once per group and the G responses attend to its keys and
  values, so prompt tokens are not recomputed G times (gradients flow through both).

``tests/test_fastlm.py`` checks logits and gradients against the HF forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED = {"llama", "qwen2", "mistral"}


def supports(model) -> bool:
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return (cfg.model_type in SUPPORTED and rope.get("rope_type", rope.get("type", "default")) == "default"
            and getattr(cfg, "hidden_act", "silu") == "silu")


class FastLM:
    def __init__(self, model):
        if not supports(model):
            raise ValueError(f"FastLM does not support model_type {model.config.model_type!r}")
        cfg = model.config
        self.model = model
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        rope = getattr(cfg, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        self.eps = cfg.rms_norm_eps

    # ---- building blocks -----------------------------------------------------------
    @property
    def layers(self):
        return self.model.model.layers

    def _norm(self, x, weight):
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)

    def _rope(self, x, positions):
        """Rotate ``x`` ``(B, H, T, D)`` by ``positions`` ``(B, T)`` (HF rotate_half convention)."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq.to(x.device)
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
        for layer in self.layers:
            q, k, v = self._qkv(layer, h, positions)
            kv.append((k, v))
            h = self._finish(layer, h, q, k, v, mask)
        return h[:, -1], kv

    # ---- training forward --------------------------------------------------------------
    def response_logits(self, prompt_ids, prompt_mask, group, response_ids, return_hidden=False):
        """Logits predicting each response token, ``(R, Lc, V)``, with gradient.

        ``group`` ``(R,)`` maps each response to its prompt row. Response token j is
        predicted from the position before it: the last prompt token for j = 0.
        """
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
        h = self.model.model.embed_tokens(inputs)
        for layer, (pk, pv) in zip(self.layers, kv):
            q, k, v = self._qkv(layer, h, positions)
            k = torch.cat([pk[group], k], dim=2)
            v = torch.cat([pv[group], v], dim=2)
            h = self._finish(layer, h, q, k, v, mask)
        hidden = torch.cat([last[group][:, None], h], dim=1)
        hidden = self.final_hidden(hidden)
        logits = self.model.lm_head(hidden)
        return (logits, hidden) if return_hidden else logits

    # ---- decoding ----------------------------------------------------------------------
    def start_decode(self, prompt_ids, prompt_mask, group, max_new_tokens):
        """Prefill unique prompts, broadcast their cache to rollouts; returns first logits and state."""
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
        return self.logits(last[group]), state

    def decode_step(self, state, tokens, t):
        """Feed response token ``t`` ``(Ra,)`` of each active row; returns next logits ``(Ra, V)``."""
        slot = state["Lp"] + t
        state["key_mask"][:, slot] = True
        positions = (state["plen"] + t)[:, None]
        mask = state["key_mask"][:, None, None, : slot + 1]
        h = self.model.model.embed_tokens(tokens[:, None])
        for layer, (ck, cv) in zip(self.layers, state["cache"]):
            q, k, v = self._qkv(layer, h, positions)
            ck[:, :, slot] = k[:, :, 0]
            cv[:, :, slot] = v[:, :, 0]
            h = self._finish(layer, h, q, ck[:, :, : slot + 1], cv[:, :, : slot + 1], mask)
        return self.logits(h[:, 0])

    @staticmethod
    def keep_rows(state, rows):
        """Drop finished rows from the decoding state (``rows`` indexes the active rows)."""
        state["cache"] = [(k[rows], v[rows]) for k, v in state["cache"]]
        state["key_mask"] = state["key_mask"][rows]
        state["plen"] = state["plen"][rows]
