"""Decoding with static shapes, replayed as CUDA graphs on a GPU (``model.cuda_graphs``).

On a GPU, a decoding step of a small model is bound by kernel launches, not compute: each of
the ~20 kernels of each layer costs a launch whatever the batch, and the engine tied
``model.generate`` at 256 rows of a 24-layer model. A CUDA graph records the step's kernels
once and replays them with one launch, but only for fixed tensor shapes and addresses. This
decoder gives the step those (``FastLM``'s layers, the same arithmetic):

- the KV cache, the key mask, the positions, the input tokens and the output logits live in
  buffers allocated once for ``(rows, length)`` and kept across rollouts while they fit
  (length rounded up to ``LENGTH_STEP``); the step writes its keys and values at the slot held
  in a one-element tensor and attends over the whole length, the slots not yet written masked
  out (they receive exactly zero weight, so the result is that of attending over the written
  ones, up to the order of floating-point sums);
- the number of live rows is bucketed (powers of two, and the buffer's row count): a step of
  ``n`` rows runs the graph of the smallest bucket >= n, the rows past n computing on stale
  inputs whose results are never read. Finished rows are dropped as today (``keep_rows``
  compacts the live rows to the front of the buffers in place), so the graphs stay valid.

The buffers stay allocated between rollouts (the largest rollout's, an evaluation's included,
is held for the run, where the dynamic path returns its cache to the allocator after each
rollout); ``model.cuda_graphs: false`` keeps the dynamic path. One graph is captured per
bucket on its first use (after a warm-up run on a side stream, as PyTorch's documentation
asks). The graphs share one memory pool: they never run at once, and no tensor of one
outlives its replay (its results are copied into the buffers), so the order of replays does
not matter. A graph reads the weights at the addresses
it was captured with: optimizer steps update them in place, and a rollout whose weights moved
(``model.to``, a reload) or whose adapters were switched off captures again. Capture runs with
deterministic algorithms switched off: their index-copy checks its indices on the host, which
a graph cannot record, and each step writes one slot per row (no duplicate indices), where the
plain kernel is exact.

``capture=False`` runs the same static-shape step eagerly: on a CPU that is how
``tests/test_static_decode.py`` checks that this path samples exactly what ``FastLM``'s samples under
the same noise; ``tests/test_gpu.py`` checks the captured graphs against it on a GPU.
"""
from __future__ import annotations

import contextlib

import torch

from explorl.policy.fastlm import FastLM

#: The buffers' length (prompt + response tokens) is a multiple of this, so that rollouts of
#: slightly different prompt widths reuse the same buffers and graphs.
LENGTH_STEP = 64


def row_buckets(capacity: int) -> list[int]:
    """The row counts a step runs at: powers of two below ``capacity``, and ``capacity``."""
    out, b = [], 1
    while b < capacity:
        out.append(b)
        b *= 2
    return out + [capacity]


def bucket_for(rows: int, capacity: int) -> int:
    return next(b for b in row_buckets(capacity) if b >= rows)


@contextlib.contextmanager
def deterministic_off():
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


class StaticBuffers:
    """Everything a decoding step reads or writes, at fixed addresses, for ``rows`` x ``length``."""

    def __init__(self, fast: FastLM, rows: int, length: int, dtype: torch.dtype, device: torch.device):
        self.rows, self.length = rows, length
        shape = (rows, fast.n_kv, length, fast.head_dim)
        self.cache = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                      for _ in fast.layers]
        self.key_mask = torch.zeros(rows, length, dtype=torch.bool, device=device)
        self.plen = torch.zeros(rows, dtype=torch.long, device=device)
        self.tokens = torch.zeros(rows, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)    # where this step's keys go
        self.step = torch.zeros((), dtype=torch.long, device=device)   # the response position t
        self.logits = torch.zeros(rows, fast.model.config.vocab_size, dtype=dtype, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}


class StaticDecoder:
    """``FastLM``'s decoding (``start_decode`` / ``decode_step`` / ``keep_rows``) at static shapes,
    replayed as CUDA graphs when ``capture``; the training forward is ``FastLM``'s."""

    def __init__(self, fast: FastLM, capture: bool):
        if capture and not torch.cuda.is_available():
            raise ValueError("model.cuda_graphs: true needs a CUDA device, and none is visible")
        self.fast, self.capture = fast, capture
        self.buffers: StaticBuffers | None = None
        self.signature = None
        self.pool = None
        self.captures = 0  # graphs captured so far (a test reads it)

    @property
    def model(self):
        return self.fast.model

    def response_logits(self, *args, **kwargs):
        return self.fast.response_logits(*args, **kwargs)

    def _weights_signature(self):
        """What a captured graph depends on besides the buffers: the weights' addresses and dtypes,
        and whether adapters are switched off."""
        return (tuple((p.data_ptr(), p.dtype) for p in self.model.parameters()),
                tuple(bool(getattr(m, "disable_adapters", False)) for m in self.model.modules()
                      if hasattr(m, "base_layer")))

    def _buffers_for(self, rows: int, length: int, dtype, device) -> StaticBuffers:
        signature = self._weights_signature()
        b = self.buffers
        if signature != self.signature and b is not None:
            b.graphs.clear()  # the weights moved: the graphs would read stale addresses
        self.signature = signature
        if b is None or b.rows < rows or b.length < length or b.cache[0][0].dtype != dtype \
                or b.cache[0][0].device != device:
            length = -(-length // LENGTH_STEP) * LENGTH_STEP
            self.buffers = None  # free the old buffers (and graphs) before allocating new ones
            b = self.buffers = StaticBuffers(self.fast, max(rows, b.rows if b else 0), length, dtype, device)
        return b

    # ---- the engine's decoding interface ------------------------------------------------------
    def start_decode(self, prompt_ids, prompt_mask, group, max_new_tokens):
        last, kv = self.fast.prefill(prompt_ids, prompt_mask)
        R, Lp = group.shape[0], prompt_ids.shape[1]
        b = self._buffers_for(R, Lp + max_new_tokens, last.dtype, last.device)
        for (ck, cv), (k, v) in zip(b.cache, kv):
            ck[:R, :, :Lp] = k[group]
            cv[:R, :, :Lp] = v[group]
        b.key_mask[:R] = False
        b.key_mask[:R, :Lp] = prompt_mask.bool()[group]
        b.plen[:R] = prompt_mask.long().sum(-1)[group]
        return self.fast.logits(last[group]), {"buffers": b, "rows": R, "Lp": Lp}

    def decode_step(self, state, tokens, t):
        b, rows = state["buffers"], state["rows"]
        b.tokens[:rows] = tokens
        b.slot.fill_(state["Lp"] + t)
        b.step.fill_(t)
        bucket = bucket_for(rows, b.rows)
        if not self.capture:
            self._step(b, bucket)
        else:
            if bucket not in b.graphs:
                b.graphs[bucket] = self._capture(b, bucket)
            b.graphs[bucket].replay()
        return b.logits[:rows]

    def keep_rows(self, state, rows):
        """Move the live rows ``rows`` (indices into the current live rows) to the front, in place."""
        b, n = state["buffers"], rows.shape[0]
        for ck, cv in b.cache:
            ck[:n] = ck[rows]
            cv[:n] = cv[rows]
        b.key_mask[:n] = b.key_mask[rows]
        b.plen[:n] = b.plen[rows]
        state["rows"] = n

    # ---- the step ------------------------------------------------------------------------------
    def _step(self, b: StaticBuffers, n: int) -> None:
        """One decoding step of the first ``n`` rows of ``b``, reading and writing only ``b``."""
        fast = self.fast
        key_mask = b.key_mask[:n]
        key_mask.index_fill_(1, b.slot, True)
        positions = (b.plen[:n] + b.step)[:, None]
        mask = key_mask[:, None, None, :]
        h = fast.model.model.embed_tokens(b.tokens[:n, None])
        for layer, (ck, cv) in zip(fast.layers, b.cache):
            q, k, v = fast._qkv(layer, h, positions)
            keys, values = ck[:n], cv[:n]
            keys.index_copy_(2, b.slot, k)
            values.index_copy_(2, b.slot, v)
            h = fast._finish(layer, h, q, keys, values, mask)
        b.logits[:n] = fast.logits(h[:, 0])

    def _capture(self, b: StaticBuffers, n: int):
        """Record ``_step`` for ``n`` rows as a CUDA graph. Running the step again on the same
        inputs writes the same values, so the warm-up runs change nothing the replay would not."""
        with deterministic_off():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._step(b, n)
            torch.cuda.current_stream().wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self._step(b, n)
        self.captures += 1
        return graph
