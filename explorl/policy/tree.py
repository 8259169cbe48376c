"""Tree rollouts: continuations that branch from shared prefixes, each prefix's keys and values
computed once and kept in a node store.

A problem's rollouts form a ``TokenTree``: the root holds the prompt, every other node a segment
of response tokens. ``TreeEngine.grow(requests)`` continues nodes: a request ``(node, k)`` draws
k children from ``node``, and the children of all requests decode in one batch. Nothing is
recomputed: the root's keys and values come from one prefill of the prompt (as the flat engine
shares a prompt's), a node's from the decode steps that drew its tokens; a child starts from the
concatenation of its ancestors' stored keys and values (a copy, no forward pass).

Where a segment ends is a ``Segments`` rule: after a number of tokens (fixed depths, DTS's
blocks), after a step-marker token (ETS's steps), or before a token whose entropy exceeds a
threshold (TreeRL's high-uncertainty branch points). ``grow(..., through=True)`` continues each
child to the end of its response and cuts it into a chain of nodes at every boundary (DTS's
rollout adds every intermediate state to the tree).

Every leaf comes out as an ordinary response (``leaves_batch``): its path's tokens with the
log-probs and entropies recorded when each was drawn, so the losses treat it like a flat sample.
Tokens are drawn by inverse CDF at a per-row uniform (``sample_next_token`` with ``noise``) and
each node keeps the uniforms it used: a leaf is the sequence flat sampling draws from the same
uniforms (``tests/test_tree.py`` checks tokens and log-probs).

Accounting (``TreeEngine.stats``): ``generated`` counts every drawn token once, a shared prefix
once; ``forwarded`` the positions run through the model; ``kv_tokens`` the positions whose keys
and values the store holds now: prompts and the segments of nodes that may still be continued
(a node's are freed once no node in its subtree can be, ``close``), with its peak; and the peak
of the decoding batch, which holds a copy of each row's prefix while it decodes (as the flat
engine holds one of the prompt per row).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from explorl.policy.sampling import sample_next_token


@dataclass(frozen=True)
class Segments:
    """Where a node's segment ends: after ``max_tokens`` tokens, after a token in ``after_ids``
    (a step marker), or before a token whose temperature-1 entropy exceeds ``entropy_above``
    (a segment has at least one token). ``None``/empty turns a rule off."""

    max_tokens: int | None = None
    after_ids: frozenset = frozenset()
    entropy_above: float | None = None

    def __post_init__(self):
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"segments: max_tokens must be >= 1, got {self.max_tokens}")


def marker_ids(tokenizer, marker: str | None) -> frozenset:
    """The token ids whose text contains ``marker`` (a step ends after one of them)."""
    if not marker:
        return frozenset()
    ids = frozenset(i for i in range(len(tokenizer)) if marker in tokenizer.decode([i]))
    if not ids:
        raise ValueError(f"no token of the tokenizer contains the step marker {marker!r}")
    return ids


@dataclass(eq=False)
class Node:
    """A segment of response tokens (the root: the prompt, no tokens). ``start`` is the response
    position of its first token. ``open``: it may still be continued (the store keeps the keys and
    values of it and its ancestors). ``reward``, ``value`` and ``visits`` are the search's."""

    tree: "TokenTree"
    index: int
    parent: "Node | None"
    start: int
    tokens: list = field(default_factory=list)
    behaviour_logp: list = field(default_factory=list)
    old_logp: list = field(default_factory=list)
    entropy: list = field(default_factory=list)
    noise: list = field(default_factory=list)
    finished: bool = False
    children: list = field(default_factory=list)
    kv: list | None = None            # per layer (keys, values), each (heads, positions, head_dim)
    next_logits: torch.Tensor | None = None  # (V,) the distribution of the token after this node
    open: bool = True
    reward: float | None = None
    value: float | None = None
    visits: int = 0

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    def path(self) -> list["Node"]:
        """The nodes from the root's first child down to this one."""
        out, node = [], self
        while node.parent is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def leaves(self) -> list["Node"]:
        if not self.children:
            return [self]
        return [leaf for child in self.children for leaf in child.leaves()]


class TokenTree:
    """One problem's tree. ``id_offset`` makes node ids unique across the trees of a batch."""

    def __init__(self, problem, id_offset: int = 0):
        self.problem, self.id_offset = problem, id_offset
        self.root = Node(tree=self, index=0, parent=None, start=0)
        self.nodes = [self.root]

    def add(self, parent: Node, start: int) -> Node:
        node = Node(tree=self, index=len(self.nodes), parent=parent, start=start)
        self.nodes.append(node)
        parent.children.append(node)
        return node

    @property
    def generated(self) -> int:
        return sum(len(n.tokens) for n in self.nodes)

    def node_id(self, node: Node) -> int:
        return self.id_offset + node.index


@dataclass
class TreeStats:
    generated: int = 0
    forwarded: int = 0
    kv_tokens: int = 0
    kv_tokens_peak: int = 0
    kv_bytes_per_token: int = 0
    batch_kv_tokens_peak: int = 0

    def metrics(self, prefix: str = "rollout/") -> dict:
        mb = self.kv_bytes_per_token / 2**20
        return {f"{prefix}tokens_generated": self.generated, f"{prefix}positions_forwarded": self.forwarded,
                f"{prefix}kv_tokens_peak": self.kv_tokens_peak, f"{prefix}kv_mb_peak": self.kv_tokens_peak * mb,
                f"{prefix}batch_kv_tokens_peak": self.batch_kv_tokens_peak}


class TreeEngine:
    """Grows ``TokenTree``s with a ``RolloutEngine``'s model (fast path or Hugging Face backend).

    ``temperatures`` is the per-position schedule of the response (its length is the response
    limit unless ``max_new_tokens`` is given); ``seed`` fixes the uniforms every row draws.
    ``max_rows`` bounds the rows decoded at once.
    """

    def __init__(self, engine, temperatures, top_p: float = 1.0, segments: Segments | None = None,
                 seed: int = 0, max_new_tokens: int | None = None, max_rows: int | None = None):
        self.engine, self.top_p = engine, top_p
        self.max_new = max_new_tokens or len(temperatures)
        self.temps = torch.tensor([float(t) for t in temperatures[:self.max_new]], dtype=torch.float32)
        if len(self.temps) < self.max_new:
            raise ValueError(f"tree rollouts: {len(self.temps)} temperatures for {self.max_new} positions")
        self.segments = segments or Segments()
        self.max_rows, self.seed = max_rows, seed
        self.gen = torch.Generator().manual_seed(seed)
        self.kv = _kv_adapter(engine)
        self.stop_ids = engine.stop_ids
        self.stats = TreeStats()
        self._after = torch.tensor(sorted(self.segments.after_ids), dtype=torch.long)

    # ---- roots ----------------------------------------------------------------------------
    @torch.no_grad()
    def roots(self, problems, id_offset: int = 0) -> list[TokenTree]:
        """One tree per problem; its prompt is prefilled once (one batch for all problems)."""
        ids, mask = self.engine.encode_prompts(problems)
        with _eval(self.engine.model):
            logits, kv = self.kv.prefill(ids, mask)
        self.stats.forwarded += ids.numel()
        trees = []
        for p, problem in enumerate(problems):
            tree = TokenTree(problem, id_offset + p * _IDS_PER_TREE)
            tree.root.kv, tree.root.next_logits = kv[p], logits[p].float()
            self._stored(tree.root)
            trees.append(tree)
        return trees

    # ---- growing ----------------------------------------------------------------------------
    def grow(self, requests, through: bool = False) -> list[list[Node]]:
        """Draw ``k`` children of each ``(node, k)`` in ``requests``. A child's segment ends at the
        first boundary (``through=False``), or the child continues to the end of its response and
        is cut into a chain at every boundary (``through=True``; the first node of each chain is
        returned). Returns the new children of each request, in order."""
        for node, k in requests:
            if k < 1:
                raise ValueError(f"tree rollouts: a request for {k} children")
            if node.next_logits is None or node.finished or node.kv is None:
                raise ValueError("tree rollouts: only an open, unfinished node can be continued")
        out = []
        for part in _parts(requests, self.max_rows):
            out.extend(self._grow(part, through))
        return out

    @torch.no_grad()
    def _grow(self, requests, through: bool) -> list[list[Node]]:
        growth = _Growth(self, requests, through)
        with _eval(self.engine.model):
            for t in range(growth.steps):
                if not growth.step(t):
                    break
        self.stats.generated += sum(len(r) for r in growth.rec["tok"])
        children = [[] for _ in requests]
        for row, g in enumerate(growth.group.tolist()):
            children[g].append(self._chain(growth.parents[row], row, growth.rec, growth.cuts[row],
                                           growth.closing[row], growth.harvested[row], growth.finished[row]))
        return children

    def probe(self, nodes, k: int) -> list[list[Node]]:
        """Continue each of ``nodes`` ``k`` times to the end of its response (a Monte-Carlo value
        estimate), then detach the continuations: their tokens count as generated, they are not
        children of the tree, and their keys and values are freed. Returns their leaves."""
        out = []
        for node, chains in zip(nodes, self.grow([(n, k) for n in nodes], through=True)):
            leaves = []
            for first in chains:
                node.children.remove(first)
                for inner in first.leaves()[0].path()[len(node.path()):]:
                    inner.open = False
                    if inner.kv is not None:
                        self.stats.kv_tokens -= inner.kv[0][0].shape[1]
                        inner.kv, inner.next_logits = None, None
                leaves.append(first.leaves()[0])
            out.append(leaves)
        return out

    def texts(self, nodes) -> list[str]:
        """The response each of ``nodes`` ends (its path's tokens), decoded as the flat engine does."""
        pad, stop = self.engine.pad, self.stop_ids
        rows = [[t for n in node.path() for t in n.tokens] for node in nodes]
        width = max([1] + [len(r) for r in rows])
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return self.engine.tokenizer.batch_decode(ids.masked_fill(torch.isin(ids, stop), pad), skip_special_tokens=True)

    def _ends_after(self, tok, seg_len) -> torch.Tensor:
        ends = torch.zeros_like(tok, dtype=torch.bool)
        if self.segments.max_tokens is not None:
            ends |= seg_len >= self.segments.max_tokens
        if len(self._after):
            ends |= torch.isin(tok, self._after)
        return ends

    def _chain(self, parent, row, rec, cuts, closing_logits, kv, finished) -> Node:
        """The nodes of one row: a chain cut at ``cuts``; returns its first node."""
        n = len(rec["tok"][row])
        bounds = [c for c, _ in cuts if 0 < c < n]
        logits_at = {c: lg for c, lg in cuts}
        edges = [0] + bounds + [n]
        first, node = None, parent
        for a, b in zip(edges[:-1], edges[1:]):
            child = node.tree.add(node, node.end)
            for key, name in (("tok", "tokens"), ("b", "behaviour_logp"), ("o", "old_logp"), ("h", "entropy"),
                              ("u", "noise")):
                setattr(child, name, rec[key][row][a:b])
            last = b == n
            child.finished = last and finished
            child.open = not child.finished
            child.next_logits = (closing_logits if last else logits_at[b]) if child.open else None
            if child.open:
                if kv is None or kv[0][0].shape[1] < b:
                    raise RuntimeError("tree rollouts: an open node without the keys and values of its tokens")
                child.kv = [(k[:, a:b].clone(), v[:, a:b].clone()) for k, v in kv]
                self._stored(child)
            first = first or child
            node = child
        if finished:
            self._release(node)
        return first

    # ---- the store ---------------------------------------------------------------------------
    def _stored(self, node: Node) -> None:
        k, v = node.kv[0]
        if not self.stats.kv_bytes_per_token:
            self.stats.kv_bytes_per_token = sum((k.element_size() * k[:, 0].numel() + v.element_size()
                                                 * v[:, 0].numel()) for k, v in node.kv)
        self.stats.kv_tokens += k.shape[1]
        self.stats.kv_tokens_peak = max(self.stats.kv_tokens_peak, self.stats.kv_tokens)

    def release(self, trees: list[TokenTree]) -> None:
        """The search is over: free every node's keys and values."""
        for tree in trees:
            for node in tree.nodes:
                node.open = False
                if node.kv is not None:
                    self.stats.kv_tokens -= node.kv[0][0].shape[1]
                    node.kv, node.next_logits = None, None

    def close(self, node: Node) -> None:
        """``node`` will not be continued: free what no open node needs any more."""
        node.open = False
        self._release(node)

    def _release(self, node: Node | None) -> None:
        while node is not None and not node.open and all(c.kv is None for c in node.children):
            if node.kv is not None:
                self.stats.kv_tokens -= node.kv[0][0].shape[1]
                node.kv, node.next_logits = None, None
            node = node.parent

    # ---- leaves as a batch -------------------------------------------------------------------
    def leaves_batch(self, trees: list[TokenTree], leaves: list[list[Node]]):
        """``leaves[i]`` of ``trees[i]`` as a ``RolloutBatch``: each leaf an ordinary response (its
        path's tokens and recorded log-probs); ``tree_node`` names the node of every token and
        ``generated_tokens`` counts the trees' tokens once each."""
        from explorl.batch import RolloutBatch
        problems = [t.problem for t in trees]
        counts = [len(ls) for ls in leaves]
        prompt_ids, prompt_mask = self.engine.encode_prompts(problems)
        rows = [leaf.path() for ls in leaves for leaf in ls]
        R, Lc = len(rows), max(1, max(sum(len(n.tokens) for n in path) for path in rows))
        pad = self.engine.pad
        ids = torch.full((R, Lc), pad, dtype=torch.long)
        node_of = torch.full((R, Lc), -1, dtype=torch.long)
        values = {k: torch.zeros(R, Lc) for k in ("b", "o", "h")}
        for r, path in enumerate(rows):
            pos = 0
            for node in path:
                m = len(node.tokens)
                ids[r, pos:pos + m] = torch.tensor(node.tokens, dtype=torch.long)
                node_of[r, pos:pos + m] = node.tree.node_id(node)
                values["b"][r, pos:pos + m] = torch.tensor(node.behaviour_logp)
                values["o"][r, pos:pos + m] = torch.tensor(node.old_logp)
                values["h"][r, pos:pos + m] = torch.tensor(node.entropy)
                pos += m
        mask = (node_of >= 0).float()
        stop = self.stop_ids
        texts = self.engine.tokenizer.batch_decode(ids.masked_fill(torch.isin(ids, stop), pad),
                                                   skip_special_tokens=True)
        group = torch.repeat_interleave(torch.arange(len(problems)), torch.tensor(counts))
        return RolloutBatch(problems=problems, counts=counts, group=group, prompt_ids=prompt_ids.cpu(),
                            prompt_mask=prompt_mask.cpu(), response_ids=ids, mask=mask,
                            behaviour_logp=values["b"] * mask, old_logp=values["o"] * mask,
                            entropy=values["h"] * mask, texts=texts, tree_node=node_of,
                            generated_tokens=sum(t.generated for t in trees))

    def node_text(self, node: Node) -> str:
        """The text of ``node``'s own tokens (its newest step)."""
        ids = torch.tensor(node.tokens, dtype=torch.long)
        ids = ids[~torch.isin(ids, self.stop_ids)]
        return self.engine.tokenizer.decode(ids.tolist(), skip_special_tokens=True)


class _Growth:
    """One ``TreeEngine.grow`` call: the children of all requests decode as the rows of one batch.

    Each step may first close rows before an uncertain token (the entropy rule), then draws a token
    per row; a row whose response ended leaves before the next forward (its last token is not fed),
    the others are fed, and a row whose segment ended after its token is cut (``through``: the
    chain goes on) or closed (its keys and values are complete, the logits are its node's next).
    ``harvested`` keeps the keys and values a row decoded, taken before it leaves the batch.
    """

    def __init__(self, engine: TreeEngine, requests, through: bool):
        self.engine, self.kv, self.through = engine, engine.kv, through
        self.dev = engine.engine.device
        counts = [k for _, k in requests]
        self.group = torch.repeat_interleave(torch.arange(len(requests)), torch.tensor(counts))
        self.parents = [requests[g][0] for g in self.group.tolist()]
        R = len(self.parents)
        self.pos0 = torch.tensor([p.end for p in self.parents])
        self.steps = int((engine.max_new - self.pos0).max())
        self.noise = torch.rand(R, self.steps, generator=engine.gen)
        prefixes = [_prefix_kv(node) for node, _ in requests]
        self.prefix_len = torch.tensor([p[0][0].shape[1] for p in prefixes])[self.group]
        self.rec = {key: [[] for _ in range(R)] for key in ("tok", "b", "o", "h", "u")}
        self.cuts = [[] for _ in range(R)]   # (token count, logits after it) where a chain is cut
        self.closing: list = [None] * R      # a closed row's next-token logits
        self.harvested: list = [None] * R
        self.finished = [False] * R
        self.seg_len = torch.zeros(R, dtype=torch.long)
        self.state = self.kv.start(prefixes, self.group.to(self.dev), self.steps)
        self.logits = torch.stack([p.next_logits for p in self.parents]).to(self.dev)
        self.active = torch.arange(R)  # rows in the decoding state, in its order

    def step(self, t: int) -> bool:
        """One position; ``False`` once no row is left."""
        stats = self.engine.stats
        stats.batch_kv_tokens_peak = max(stats.batch_kv_tokens_peak, int((self.prefix_len[self.active] + t).sum()))
        if self.engine.segments.entropy_above is not None:
            self._end_before_uncertain(t)
            if not len(self.active):
                return False
        tok, boundary = self._draw(t)
        if not len(self.active):
            return False
        self.logits = self.kv.step(self.state, tok, t)
        stats.forwarded += len(self.active)
        if boundary.any():
            self._end_segments(boundary.nonzero().squeeze(-1), t + 1)
        return bool(len(self.active))

    def _end_before_uncertain(self, t: int) -> None:
        logp = torch.log_softmax(self.logits.float(), -1)
        uncertain = (-(logp.exp() * logp).sum(-1)).cpu() > self.engine.segments.entropy_above
        before = uncertain & (self.seg_len[self.active] >= 1)
        if before.any():
            self._end_segments(before.nonzero().squeeze(-1), t)

    def _draw(self, t: int):
        """Draw a token per row; rows whose response ended leave. Returns the fed rows' tokens and
        which of them end their segment."""
        engine, active = self.engine, self.active
        temps = engine.temps[(self.pos0[active] + t).clamp_max(engine.max_new - 1)].to(self.dev)[:, None]
        tok, lp_b, lp_1, ent = sample_next_token(self.logits, temps, engine.top_p, None,
                                                 self.noise[active, t].to(self.dev))
        tok_c = tok.cpu()
        drawn = zip(tok_c.tolist(), lp_b.cpu().tolist(), lp_1.cpu().tolist(), ent.cpu().tolist(),
                    self.noise[active, t].tolist())
        for row, values in zip(active.tolist(), drawn):
            for key, value in zip(("tok", "b", "o", "h", "u"), values):
                self.rec[key][row].append(value)
        self.seg_len[active] += 1
        done = torch.isin(tok_c, engine.stop_ids) | (self.pos0[active] + t + 1 >= engine.max_new)
        boundary = engine._ends_after(tok_c, self.seg_len[active]) & ~done
        for i in done.nonzero().squeeze(-1).tolist():
            self.finished[int(active[i])] = True
        if done.any():  # the chain's inner nodes may be continued: keep what its row fed
            self._leave(done.nonzero().squeeze(-1), t if self.through else None)
        feed = ~done
        return tok[feed.to(tok.device)], boundary[feed]

    def _end_segments(self, local_rows, fed: int) -> None:
        """The segments of ``local_rows`` end here (``fed`` of their tokens are in the cache)."""
        for i in local_rows.tolist():
            row = int(self.active[i])
            if self.through:
                self.cuts[row].append((len(self.rec["tok"][row]), self.logits[i].float()))
            else:
                self.closing[row] = self.logits[i].float()
        self.seg_len[self.active[local_rows]] = 0
        if not self.through:
            self._leave(local_rows, fed)

    def _leave(self, local_rows, fed: int | None) -> None:
        """``local_rows`` leave the batch, their first ``fed`` positions kept (none if ``None``)."""
        if fed:
            layers = self.kv.new_kv(self.state, local_rows.to(self.dev), fed)
            for j, i in enumerate(local_rows.tolist()):
                self.harvested[int(self.active[i])] = [(k[j], v[j]) for k, v in layers]
        keep = torch.ones(len(self.active), dtype=torch.bool)
        keep[local_rows] = False
        keep = keep.nonzero().squeeze(-1)
        self.active, self.logits = self.active[keep], self.logits[keep.to(self.logits.device)]
        self.kv.keep_rows(self.state, keep.to(self.dev))


#: Node ids of one tree lie in [offset, offset + _IDS_PER_TREE).
_IDS_PER_TREE = 1 << 20


def _prefix_kv(node: Node) -> list:
    """Per layer, the keys and values of the prompt and every segment down to ``node``."""
    chain = [node.tree.root] + node.path()
    if any(n.kv is None for n in chain):
        raise RuntimeError("tree rollouts: a prefix's keys and values were freed while a descendant is open")
    return [(torch.cat([n.kv[layer][0] for n in chain], dim=1), torch.cat([n.kv[layer][1] for n in chain], dim=1))
            for layer in range(len(chain[0].kv))]


def _parts(requests, max_rows):
    if not max_rows:
        return [requests]
    parts, rows = [], 0
    for req in requests:
        if parts and rows + req[1] <= max_rows:
            parts[-1].append(req)
            rows += req[1]
        else:
            parts.append([req])
            rows = req[1]
    return parts


class _eval:
    """The model in eval mode for the block, restored after."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was)


def _kv_adapter(engine):
    from explorl.policy.engine import HFBackend
    from explorl.policy.fastlm import FastLM
    backend = getattr(engine, "backend", None)
    if isinstance(backend, FastLM):
        return _FastKV(backend)
    if isinstance(backend, HFBackend):
        return _HFKV(backend)
    raise ValueError("tree rollouts need the built-in engine (model.backend: auto, fast or hf); "
                     f"this engine is {type(engine).__name__}")


def _left_padded(prefixes, group, extra: int):
    """Per layer ``(R, H, Lmax + extra, D)`` keys and values of each row's prefix, left-padded, and
    the ``(R, Lmax + extra)`` mask of real positions, the prefix lengths and ``Lmax``."""
    lengths = torch.tensor([p[0][0].shape[1] for p in prefixes])
    Lmax = int(lengths.max())
    layers = []
    for layer in range(len(prefixes[0])):
        k0 = prefixes[0][layer][0]
        H, D = k0.shape[0], k0.shape[2]
        ks = k0.new_zeros(len(prefixes), H, Lmax + extra, D)
        vs = torch.zeros_like(ks)
        for i, p in enumerate(prefixes):
            ks[i, :, Lmax - lengths[i]:Lmax] = p[layer][0]
            vs[i, :, Lmax - lengths[i]:Lmax] = p[layer][1]
        layers.append((ks[group], vs[group]))
    mask = torch.zeros(len(prefixes), Lmax + extra, dtype=torch.bool)
    for i in range(len(prefixes)):
        mask[i, Lmax - lengths[i]:Lmax] = True
    return layers, mask[group.cpu()], lengths[group.cpu()], Lmax


class _FastKV:
    """The fast path's decoding state built from stored keys and values (``FastLM.decode_step``)."""

    def __init__(self, lm):
        self.lm = lm

    def prefill(self, ids, mask):
        last, kv = self.lm.prefill(ids, mask)
        logits = self.lm.logits(last)
        Lp, plen = ids.shape[1], mask.long().sum(-1).tolist()
        return logits, [[(k[p, :, Lp - plen[p]:].clone(), v[p, :, Lp - plen[p]:].clone()) for k, v in kv]
                        for p in range(ids.shape[0])]

    def start(self, prefixes, group, extra: int):
        layers, mask, lengths, Lmax = _left_padded(prefixes, group, extra)
        dev = group.device
        return {"cache": layers, "key_mask": mask.to(dev), "plen": lengths.to(dev), "Lp": Lmax}

    def step(self, state, tokens, t):
        return self.lm.decode_step(state, tokens, t)

    def keep_rows(self, state, rows):
        self.lm.keep_rows(state, rows)

    @staticmethod
    def new_kv(state, rows, fed: int):
        Lp = state["Lp"]
        return [(k[rows, :, Lp:Lp + fed], v[rows, :, Lp:Lp + fed]) for k, v in state["cache"]]


class _HFKV:
    """The Hugging Face path's decoding state: a ``DynamicCache`` filled with stored keys and values."""

    def __init__(self, hf):
        self.hf = hf

    def prefill(self, ids, mask):
        from transformers import DynamicCache
        out = self.hf._forward(ids, mask, DynamicCache())
        layers = _cache_layers(self.hf._cache(out))
        Lp, plen = ids.shape[1], mask.long().sum(-1).tolist()
        return out.logits[:, -1], [[(k[p, :, Lp - plen[p]:].clone(), v[p, :, Lp - plen[p]:].clone())
                                    for k, v in layers] for p in range(ids.shape[0])]

    def start(self, prefixes, group, extra: int):
        from transformers import DynamicCache
        layers, mask, _, Lmax = _left_padded(prefixes, group, 0)
        cache = DynamicCache(ddp_cache_data=[(k.to(group.device), v.to(group.device)) for k, v in layers])
        return {"past": cache, "mask": mask.long().to(group.device), "Lp": Lmax}

    def step(self, state, tokens, t):
        return self.hf.decode_step(state, tokens, t)

    def keep_rows(self, state, rows):
        self.hf.keep_rows(state, rows)

    @staticmethod
    def new_kv(state, rows, fed: int):
        Lp = state["Lp"]
        return [(k[rows, :, Lp:Lp + fed], v[rows, :, Lp:Lp + fed]) for k, v in _cache_layers(state["past"])]


def _cache_layers(cache) -> list:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))
