"""The rollout engine: batched sampling with a KV cache, variable rollouts per problem.

``rollout(problems, counts, ...)`` samples ``counts[i]`` responses for problem i in one
batch, recording for every sampled token its log-prob under the sampling distribution
(temperature may vary with position, top-p), under the policy at temperature 1, and the
temperature-1 entropy. ``response_logits`` is the training-side forward over the same
batch. Llama-family models take the shared-prompt fast path (``fastlm``, LoRA adapters
included); any other ``AutoModelForCausalLM`` takes the generic Hugging Face path.
``backend="fast"`` on a model the fast path cannot run exactly is an error that says why.
On a GPU, ``cuda_graphs`` (``model.cuda_graphs``) replays the fast path's decoding steps as
CUDA graphs at static, bucketed shapes (``explorl.policy.static_decode``).
Prompts are rendered by ``prompt_format`` (``explorl.policy.prompts``; raw text by default),
and a response ends at the first of ``stop_ids`` (EOS, the chat template's end of turn, the
model's EOS ids), which it includes. An activation intervention
(``explorl.policy.intervention``) given to ``rollout`` acts while it samples, and only then.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from explorl.policy import fastlm
from explorl.policy.intervention import LastPromptActivations, check_layer
from explorl.policy.prompts import RAW, stop_token_ids
from explorl.policy.sampling import sample_next_token, token_logp_entropy
from explorl.batch import OFF_POLICY, RolloutBatch


class RolloutEngine:
    #: whether ``rollout`` takes a ``thinking`` rule (soft tokens, ``explorl.policy.soft_decode``)
    soft_tokens = True
    supports_interventions = True  # ``rollout(..., intervention=...)`` (an engine that cannot says so)

    def __init__(self, model, tokenizer, backend: str = "auto", prompt_format=None, cuda_graphs="auto"):
        if backend not in ("auto", "fast", "hf"):
            raise ValueError(f"engine backend must be auto, fast or hf, got {backend!r}")
        self.model, self.tokenizer = model, tokenizer
        self.forward_backend = backend  # what a second engine over another copy of the model takes
        use_fast = backend == "fast" or (backend == "auto" and fastlm.supports(model))
        self.backend = fastlm.FastLM(model) if use_fast else HFBackend(model)
        if use_graphs(cuda_graphs, use_fast, self.device):
            from explorl.policy.static_decode import StaticDecoder
            self.backend = StaticDecoder(self.backend, capture=True)
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.stop_ids = torch.tensor(stop_token_ids(tokenizer, model), dtype=torch.long)  # EOS, end of turn, ...
        self.prompt_format = prompt_format or RAW

    @property
    def device(self):
        return next(self.model.parameters()).device

    def weights_updated(self) -> None:
        """Called after each optimizer step. This engine samples from the live model: nothing to
        do (the vLLM engine pushes the new weights to its own copy)."""

    def close(self) -> None:
        """Release what the engine holds beside the model (nothing here)."""

    def prompt_texts(self, problems) -> list[str]:
        """What the model reads for each problem: its rendered prompt and any stored prefix."""
        return [self.prompt_format.render(p) + p.prefix for p in problems]

    def encode_prompts(self, problems):
        enc = self.tokenizer(self.prompt_texts(problems), return_tensors="pt", padding=True,
                             add_special_tokens=False)
        return enc.input_ids.to(self.device), enc.attention_mask.to(self.device)

    @property
    def num_layers(self) -> int:
        """The policy's decoder layers (what an intervention's ``layer`` indexes)."""
        return self._eager_backend.num_layers

    @property
    def _eager_backend(self):
        """The backend that runs every forward as it is written (the fast path a CUDA-graph
        decoder wraps): where an activation intervention can act."""
        return getattr(self.backend, "fast", self.backend)

    @torch.no_grad()
    def rollout(self, problems, counts, temperatures, top_p: float = 1.0, seed: int = 0,
                max_new_tokens: int | None = None, noise: torch.Tensor | None = None,
                max_rows: int | None = None, thinking=None, intervention=None) -> RolloutBatch:
        """``noise`` (``(R, max_new_tokens)`` uniforms, optional) fixes each row's draws
        independently of the others (``sample_next_token``); ``seed`` is used otherwise.
        Sampling stays on the model's device; the batch comes back on the CPU. ``max_rows``
        bounds the rows decoded at once (and so the KV cache): whole groups are sampled in
        consecutive calls of at most that many rows (one group larger than it alone), the
        k-th call with ``seed + k`` (with ``noise``, each row keeps its own). ``thinking`` (a
        ``explorl.policy.soft_decode.ThinkingRule``) decides each step instead: soft tokens.

        With an ``intervention`` the tokens are drawn from the steered model and
        ``behaviour_logp`` is their log-prob there; ``old_logp`` and ``entropy`` are the
        unsteered policy's, from a forward over the sampled tokens without it. Steered steps run
        eagerly (a captured CUDA graph would not hold the intervention)."""
        check_counts(problems, counts)
        if thinking is not None and intervention is not None:
            raise ValueError("a rollout takes soft tokens (thinking) or an activation intervention, not both")
        if max_rows is not None and sum(counts) > max_rows:
            return self._rollout_in_parts(problems, counts, temperatures, top_p, seed, max_new_tokens, noise,
                                          max_rows, thinking, intervention)
        if thinking is not None:
            from explorl.policy.soft_decode import rollout_with_rule
            return rollout_with_rule(self, problems, counts, temperatures, top_p, seed, max_new_tokens, noise,
                                     thinking)
        max_new = max_new_tokens or len(temperatures)
        temps = [float(t) for t in temperatures[:max_new]]
        dev = self.device
        gen = torch.Generator(device=dev).manual_seed(seed) if noise is None else None
        if noise is not None:
            noise = noise.to(dev)
        prompt_ids, prompt_mask = self.encode_prompts(problems)
        group = torch.repeat_interleave(torch.arange(len(problems)), torch.tensor(counts)).to(dev)
        R = group.shape[0]
        was_training = self.model.training
        self.model.eval()
        out = {k: torch.zeros(R, max_new, dtype=d, device=dev) for k, d in
               [("ids", torch.long), ("b", torch.float32), ("o", torch.float32), ("h", torch.float32)]}
        out["ids"].fill_(self.pad)
        stop_ids = self.stop_ids.to(dev)
        lengths = torch.zeros(R, dtype=torch.long, device=dev)
        active = torch.arange(R, device=dev)  # rows still in the decoding state
        running = torch.ones(R, dtype=torch.bool, device=dev)  # per active row: no stop token yet
        # a captured CUDA graph would not hold the intervention: steered steps run eagerly
        backend = self.backend if intervention is None else self._eager_backend
        with nullcontext() if intervention is None else backend.intervene(intervention):
            logits, state = backend.start_decode(prompt_ids, prompt_mask, group, max_new)
            for t in range(max_new):
                tok, lp_b, lp_1, ent = sample_next_token(logits, temps[t], top_p, gen,
                                                         None if noise is None else noise[active, t])
                rows = active[running]
                out["ids"][rows, t], out["b"][rows, t] = tok[running], lp_b[running]
                out["o"][rows, t], out["h"][rows, t] = lp_1[running], ent[running]
                lengths[rows] = t + 1
                running &= ~torch.isin(tok, stop_ids)
                if t == max_new - 1 or not running.any():
                    break
                if running.float().mean() < 0.75:  # drop finished rows; copying the cache pays off
                    keep = running.nonzero().squeeze(-1)
                    active, tok, running = active[keep], tok[keep], running[keep]
                    backend.keep_rows(state, keep)
                logits = backend.decode_step(state, tok, t)
        Lc = int(lengths.max())
        mask = (torch.arange(Lc, device=dev)[None] < lengths[:, None]).float()
        ids = out["ids"][:, :Lc].masked_fill(mask == 0, self.pad)
        if intervention is not None:  # π_old and its entropy: the policy's own, not the steered sampler's
            unsteered = self.backend.response_logits(prompt_ids, prompt_mask, group, ids)
            out["o"][:, :Lc], out["h"][:, :Lc] = token_logp_entropy(unsteered, ids, True)
        self.model.train(was_training)
        out = {k: v.cpu() for k, v in out.items()}
        lengths, mask, ids = lengths.cpu(), mask.cpu(), ids.cpu()
        texts = self.tokenizer.batch_decode(ids.masked_fill(torch.isin(ids, self.stop_ids), self.pad),
                                            skip_special_tokens=True)
        return RolloutBatch(problems=list(problems), counts=list(counts), group=group.cpu(),
                            prompt_ids=prompt_ids.cpu(), prompt_mask=prompt_mask.cpu(), response_ids=ids,
                            mask=mask, behaviour_logp=out["b"][:, :Lc] * mask, old_logp=out["o"][:, :Lc] * mask,
                            entropy=out["h"][:, :Lc] * mask, texts=texts)

    def _rollout_in_parts(self, problems, counts, temperatures, top_p, seed, max_new_tokens, noise, max_rows,
                          thinking=None, intervention=None):
        batches, row = [], 0
        for k, (groups, rows) in enumerate(group_parts(counts, max_rows)):
            part_noise = None if noise is None else noise[row:row + rows]
            batches.append(self.rollout([problems[g] for g in groups], [counts[g] for g in groups], temperatures,
                                        top_p, seed + k, max_new_tokens, part_noise, thinking=thinking,
                                        intervention=intervention))
            row += rows
        return RolloutBatch.concat(batches, self.pad)

    @torch.no_grad()
    def prompt_activations(self, problems, layer: int) -> torch.Tensor:
        """The output of decoder ``layer`` at each problem's last prompt token, ``(P, d)`` float32
        on the CPU: read where an intervention at that layer acts, without changing anything."""
        record = LastPromptActivations(layer)
        ids, mask = self.encode_prompts(problems)
        was_training = self.model.training
        self.model.eval()
        with self._eager_backend.intervene(record):
            self._eager_backend.run_prompts(ids, mask)
        self.model.train(was_training)
        return record.rows

    @property
    def response_end_id(self) -> int:
        """The token a response of this engine's format ends with: the chat template's end of
        turn under ``prompt.template: chat``, else the tokenizer's EOS."""
        from explorl.policy.prompts import end_of_turn_id
        if getattr(self.prompt_format, "template", "raw") == "chat":
            eot = end_of_turn_id(self.tokenizer)
            if eot is not None:
                return eot
        return self.eos

    @torch.no_grad()
    def score_responses(self, problems, counts, texts=None, token_ids=None, behaviour_logp=None,
                        kind: int = OFF_POLICY) -> RolloutBatch:
        """A batch of responses the policy did not sample now (a teacher's, a reference, a replayed
        one of its own): ``texts`` (tokenized here, the first stop token appended) or
        ``token_ids`` (kept as they are), ``counts[i]`` of them for problem i, in order.
        ``old_logp`` and ``entropy`` come from a forward pass of the current policy;
        ``behaviour_logp`` is given per row (the log-probs a replayed response was sampled with)
        or 0 (the behaviour policy unknown, taken as π = 1, as LUFFY does for teacher traces)."""
        if (texts is None) == (token_ids is None):
            raise ValueError("score_responses: give texts or token_ids")
        if token_ids is None:
            end = self.response_end_id
            token_ids = [self.tokenizer(t, add_special_tokens=False).input_ids + [end] for t in texts]
        if len(token_ids) != sum(counts) or any(len(ids) == 0 for ids in token_ids):
            raise ValueError(f"score_responses: {len(token_ids)} non-empty responses for counts summing to {sum(counts)}")
        R, Lc = len(token_ids), max(len(ids) for ids in token_ids)
        ids = torch.full((R, Lc), self.pad, dtype=torch.long)
        mask = torch.zeros(R, Lc)
        behaviour = torch.zeros(R, Lc)
        for r, row in enumerate(token_ids):
            ids[r, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, :len(row)] = 1.0
            if behaviour_logp is not None:
                behaviour[r, :len(row)] = torch.as_tensor(behaviour_logp[r], dtype=torch.float32)[:len(row)]
        prompt_ids, prompt_mask = self.encode_prompts(problems)
        group = torch.repeat_interleave(torch.arange(len(problems)), torch.tensor(counts))
        was_training = self.model.training
        self.model.eval()
        logits = self.backend.response_logits(prompt_ids, prompt_mask, group.to(self.device), ids.to(self.device))
        self.model.train(was_training)
        old, entropy = token_logp_entropy(logits, ids.to(logits.device), True)
        old, entropy = old.cpu() * mask, entropy.cpu() * mask
        if texts is None:
            texts = self.tokenizer.batch_decode(ids.masked_fill(torch.isin(ids, self.stop_ids), self.pad),
                                                skip_special_tokens=True)
        return RolloutBatch(problems=list(problems), counts=list(counts), group=group, prompt_ids=prompt_ids.cpu(),
                            prompt_mask=prompt_mask.cpu(), response_ids=ids, mask=mask, behaviour_logp=behaviour * mask,
                            old_logp=old, entropy=entropy, texts=list(texts),
                            kind=torch.full((R,), kind, dtype=torch.long))

    def response_logits(self, batch: RolloutBatch, rows: torch.Tensor | None = None, return_hidden=False):
        """Logits ``(r, Lc, V)`` predicting the response tokens of ``rows`` (all by default)."""
        rows = torch.arange(batch.size) if rows is None else rows
        prompts, group = torch.unique(batch.group[rows], return_inverse=True)
        dev = self.device
        soft = {} if batch.soft is None else {"soft": batch.soft.rows(rows)}  # soft tokens fed while sampling
        return self.backend.response_logits(batch.prompt_ids[prompts].to(dev), batch.prompt_mask[prompts].to(dev),
                                            group.to(dev), batch.response_ids[rows].to(dev), return_hidden, **soft)


def use_graphs(setting, fast: bool, device: torch.device) -> bool:
    """Whether decoding replays CUDA graphs: ``auto`` where the fast path runs on a CUDA device;
    ``True`` there or an error that says why not; ``False`` never."""
    if setting is False:
        return False
    if setting != "auto" and setting is not True:
        raise ValueError(f"model.cuda_graphs: expected auto, true or false, got {setting!r}")
    if setting is True and device.type != "cuda":
        raise ValueError(f"model.cuda_graphs: true needs the policy on a CUDA device; it is on {device.type}")
    if setting is True and not fast:
        raise ValueError("model.cuda_graphs: true needs the fast path (a Llama, Qwen2 or Mistral model with "
                         "model.backend: auto or fast); this model decodes through its Hugging Face forward")
    return fast and device.type == "cuda"


def check_counts(problems, counts) -> None:
    if len(problems) != len(counts) or any(c < 1 for c in counts):
        raise ValueError(f"rollout: need one count >= 1 per problem, got {len(counts)} counts "
                         f"for {len(problems)} problems")


def group_parts(counts, max_rows: int) -> list[tuple[list[int], int]]:
    """Consecutive whole groups packed into parts of at most ``max_rows`` rows (a group larger
    than that alone): ``(group indices, rows)`` per part."""
    parts = []
    for g, c in enumerate(counts):
        if parts and parts[-1][1] + c <= max_rows:
            parts[-1] = (parts[-1][0] + [g], parts[-1][1] + c)
        else:
            parts.append(([g], c))
    return parts


class HFBackend:
    """The generic path through the model's own forward (any ``AutoModelForCausalLM``).

    Positions are counted over the attention mask, so left-padded prompts start at position 0
    whether the model uses rotary or learned absolute position embeddings (GPT-2). Under a
    peft wrapper it calls the base model, whose layers hold the adapters.
    """

    def __init__(self, model):
        import inspect

        from explorl.policy.model import unwrap
        self.model = unwrap(model)
        # newer transformers name the cache argument ``cache``; older ones ``past_key_values``
        self.cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self._prompt = True  # what the forward under way runs: prompts, or one decoded token per row

    @property
    def layers(self):
        from explorl.policy.model import decoder_layers
        layers = decoder_layers(self.model)
        if not layers:
            raise ValueError(f"an activation intervention needs the decoder layers of {type(self.model).__name__}, "
                             f"which names none in _no_split_modules")
        return layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @contextmanager
    def intervene(self, intervention):
        """``intervention`` as a forward hook on its decoder layer inside the block (removed on
        leaving it, whatever happens); nothing changes with ``None``."""
        if intervention is None:
            yield
            return
        layers = self.layers
        check_layer(intervention, len(layers))

        def hook(module, args, output):
            if isinstance(output, tuple):  # layers of older transformers return (hidden, ...)
                return (intervention(output[0], self._prompt),) + output[1:]
            return intervention(output, self._prompt)

        handle = layers[intervention.layer].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def run_prompts(self, ids, attention_mask) -> None:
        """A forward over the prompts alone (what an installed intervention reads)."""
        self._prompt = True
        self._forward(ids, attention_mask)

    def _forward(self, ids, attention_mask, past=None, hidden=False, embeds=None):
        """``embeds`` (input embeddings) in place of ``ids`` where given (soft tokens)."""
        width = (ids if embeds is None else embeds).shape[1]
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -width:]
        inputs = {"input_ids": ids} if embeds is None else {"inputs_embeds": embeds}
        return self.model(**inputs, attention_mask=attention_mask, position_ids=positions,
                          use_cache=past is not None, output_hidden_states=hidden, **{self.cache_arg: past})

    def start_decode(self, prompt_ids, prompt_mask, group, max_new_tokens, want_hidden=False):
        from transformers import DynamicCache
        ids, mask = prompt_ids[group], prompt_mask[group]
        self._prompt = True
        out = self._forward(ids, mask, DynamicCache(), hidden=want_hidden)
        state = {"past": self._cache(out), "mask": mask}
        if want_hidden:  # the last layer's output, after the final norm
            state["hidden"] = out.hidden_states[-1][:, -1]
        return out.logits[:, -1], state

    def decode_step(self, state, tokens, t, embeds=None):
        """Feed ``tokens`` ``(Ra,)`` (or the input embeddings ``embeds`` ``(Ra, d)``: soft tokens)."""
        state["mask"] = torch.cat([state["mask"], torch.ones_like(state["mask"][:, :1])], dim=1)
        self._prompt = False
        want_hidden = "hidden" in state
        out = self._forward(tokens[:, None], state["mask"], state["past"], hidden=want_hidden,
                            embeds=None if embeds is None else embeds[:, None])
        state["past"] = self._cache(out)
        if want_hidden:
            state["hidden"] = out.hidden_states[-1][:, -1]
        return out.logits[:, -1]

    @staticmethod
    def _cache(out):
        return getattr(out, "cache", None) or out.past_key_values

    @staticmethod
    def keep_rows(state, rows):
        state["past"].batch_select_indices(rows)
        state["mask"] = state["mask"][rows]
        if "hidden" in state:
            state["hidden"] = state["hidden"][rows]

    def response_logits(self, prompt_ids, prompt_mask, group, response_ids, return_hidden=False, soft=None):
        ids = torch.cat([prompt_ids[group], response_ids], dim=1)
        mask = torch.cat([prompt_mask[group], torch.ones_like(response_ids)], dim=1)
        embeds = None
        if soft is not None:  # the soft tokens fed while sampling, in place of their tokens' embeddings
            embed = self.model.get_input_embeddings()
            embeds = torch.cat([embed(prompt_ids[group]), soft.input_embeddings(embed, response_ids)], dim=1)
        out = self._forward(ids, mask, hidden=return_hidden, embeds=embeds)
        Lp, Lc = prompt_ids.shape[1], response_ids.shape[1]
        logits = out.logits[:, Lp - 1: Lp - 1 + Lc]
        if return_hidden:
            return logits, out.hidden_states[-1][:, Lp - 1: Lp - 1 + Lc]
        return logits
