"""Test-time scaling: answer every held-out problem with a search method at a budget of N
responses, and report the pass rate against the tokens generated and the KV memory held.

- ``best_of_n``: N independent samples; the verifier picks (oracle selection: a problem passes
  when any sample is correct).
- ``majority``: N independent samples; the most frequent answer (the verifier's extractor, else
  the stripped completion; ties to the first seen). The verifier does not choose; it only scores
  the chosen answer.
- ``ets``, ``dts``, ``dts_star``: the tree searches of the rollout level (``explorl list --level
  rollout``) with their default parameters, width / iterations N. The verifier guides them (leaf
  rewards, ETS's Monte-Carlo values) and ETS and DTS* answer with their best leaf, so they are
  oracle selections too, compared with best-of-N at the tokens each spends; DTS answers with a
  sample of its tree's Boltzmann policy.

Per method and N: ``pass_rate``; ``tokens`` generated per problem (a tree's shared prefix once,
ETS's value rollouts included); ``kv_tokens``, the most positions whose keys and values were
held at once while answering the set, per problem (flat: the prompts and every response, all
decoded together; trees: the node store's peak); ``kv_mb`` the same in MiB for this model;
``verifier_calls`` per problem, the ones that could steer the answer.
"""
from __future__ import annotations

import random
from collections import Counter

import torch

from explorl.batch import RolloutRequest

FLAT = ("best_of_n", "majority")
TREES = ("ets", "dts", "dts_star")
SEARCHES = FLAT + TREES
SELECTION = {"best_of_n": "verifier picks (oracle)", "majority": "majority vote, no verifier",
             "ets": "verifier-guided tree, best leaf (oracle)", "dts": "verifier-guided tree, a Boltzmann sample",
             "dts_star": "verifier-guided tree, best leaf (oracle)"}


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in SEARCHES]
    if not methods or unknown:
        raise ValueError(f"--search: {', '.join(unknown) or 'nothing given'} not among {', '.join(SEARCHES)}")
    return methods


def budgets_up_to(n: int) -> list[int]:
    """1, 2, 4, ... up to ``n``, and ``n``: the points of the scaling curve."""
    if n < 1:
        raise ValueError(f"--budget must be >= 1, got {n}")
    out = [1]
    while out[-1] * 2 <= n:
        out.append(out[-1] * 2)
    return out if out[-1] == n else out + [n]


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one position holds in ``model`` (every layer)."""
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * layers * kv_heads * head_dim * next(model.parameters()).element_size()


def answer_key(tasks, problem, completion: str) -> str:
    """What majority vote counts: the answer the source's verifier extracts, else the text."""
    verifier = getattr(tasks.sources.get(problem.source), "verifier", None)
    extractor = getattr(verifier, "extractor", None)
    if extractor is not None:
        found = extractor.extract(problem.completed(completion))
        return "" if found is None else str(found)
    return completion.strip()


def majority_index(keys: list[str]) -> int:
    """The first response whose answer is the most frequent (ties: the answer seen first)."""
    counts = Counter(keys)
    top = max(counts.values())
    return next(i for i, k in enumerate(keys) if counts[k] == top)


def run_search(engine, tasks, problems, methods, budgets, temperature: float, max_new_tokens: int,
               seed: int, score) -> list[dict]:
    """One row per (method, N). ``score(problems, texts) -> rewards`` verifies."""
    temps = [temperature] * max_new_tokens
    per_token = kv_bytes_per_token(engine.model)
    P = len(problems)
    rows = []
    for method in methods:
        for n in budgets:
            calls = [0]

            def counted(probs, texts, calls=calls):
                calls[0] += len(texts)
                return score(probs, texts)

            if method in FLAT:
                passed, tokens, kv, steering = _flat(engine, tasks, problems, method, n, temps, seed, score)
            else:
                passed, tokens, kv = _tree(engine, problems, method, n, temps, seed, counted)
                steering = calls[0]
            rows.append({"method": method, "n": n, "pass_rate": passed / P, "tokens": tokens / P,
                         "kv_tokens": kv / P, "kv_mb": kv / P * per_token / 2**20,
                         "verifier_calls": steering / P, "selection": SELECTION[method]})
    return rows


def _flat(engine, tasks, problems, method, n, temps, seed, score):
    batch = engine.rollout(problems, [n] * len(problems), temps, seed=seed)
    group_problems = [problems[g] for g in batch.group.tolist()]
    rewards = torch.tensor(score(group_problems, batch.texts), dtype=torch.float32)
    passed = 0
    for i, problem in enumerate(problems):
        rows = (batch.group == i).nonzero().squeeze(-1).tolist()
        if method == "best_of_n":
            passed += int(float(rewards[rows].max()) >= 1.0)
        else:
            chosen = rows[majority_index([answer_key(tasks, problem, batch.texts[r]) for r in rows])]
            passed += int(float(rewards[chosen]) >= 1.0)
    kv = int(batch.prompt_mask.sum()) + batch.tokens  # every prompt once and every response, held together
    steering = n * len(problems) if method == "best_of_n" else 0
    return passed, batch.tokens, kv, steering


def _tree(engine, problems, method, n, temps, seed, score):
    from explorl.registry import build
    rollout = build("rollout", method)
    request = RolloutRequest(engine=engine, problems=problems, counts=[n] * len(problems), temperatures=temps,
                             top_p=1.0, seed=seed, score=score)
    tree_engine, trees, leaves = rollout.search(request)
    rng = random.Random(seed)
    passed = sum(int((rollout.answer(ls, rng).reward or 0.0) >= 1.0) for ls in leaves)
    tree_engine.release(trees)
    return passed, tree_engine.stats.generated, tree_engine.stats.kv_tokens_peak


def format_scaling(rows: list[dict]) -> str:
    head = f"{'method':<10}{'N':>5}{'pass':>8}{'tokens':>9}{'kv tok':>9}{'kv MiB':>9}{'verif':>7}  selection"
    lines = [head]
    for r in rows:
        lines.append(f"{r['method']:<10}{r['n']:>5}{r['pass_rate']:>8.3f}{r['tokens']:>9.1f}{r['kv_tokens']:>9.1f}"
                     f"{r['kv_mb']:>9.4f}{r['verifier_calls']:>7.1f}  {r['selection']}")
    lines.append("per problem: tokens generated (a shared prefix once), peak KV positions held, verifier calls "
                 "that steer the answer; best_of_n, ets and dts_star select with the verifier (oracle), majority "
                 "does not")
    return "\n".join(lines)
