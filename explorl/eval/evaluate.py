"""Held-out evaluation: pass@k per source, mean token entropy, mean response length, distinct
correct answers, and the per-problem counts they come from (``per_problem``), so that a
comparison can resample problems (``explorl.compare.stats``, ``explorl.compare.paired``)."""
from __future__ import annotations

from collections import defaultdict


from explorl.eval.passk import pass_at_k


def evaluate(engine, tasks, eval_sets: dict, samples: int, ks: list[int], temperature: float = 1.0,
             max_new_tokens: int = 12, seed: int = 0, rows_per_batch: int = 2048, verifier=None,
             ledger=None, dp=None, thinking=None, on_batch=None) -> dict:
    """Sample ``samples`` responses per held-out problem and score them.

    Returns ``{"pass@k": {source: value, ..., "all": value}, "entropy": {...},
    "response_length": {...}, "distinct_correct": {...}, "tokens": int, "samples": n,
    "per_problem": {...}}``; ``all`` averages over problems of every source, ``response_length``
    is the mean number of tokens of a sampled response. ``per_problem`` holds one list per
    field, one entry per held-out problem in a fixed order (``PER_PROBLEM``): its id and source,
    how many of the n samples were correct, distinct correct answers, the entropy summed over its
    response tokens, its response tokens, and the tokens and count of its wrong answers.
    ``verifier`` (a ``GuardedVerifier``; one is made for the call when ``None``) scores under a
    time limit; its faults go to ``ledger`` (a ``FaultLedger``) when given. Under data
    parallelism (``dp``, ``explorl.train.parallel``) each rank samples its share of the chunks
    of problems, each chunk exactly as one process would, and every rank gets the whole result.
    ``thinking`` (a decoding's ``ThinkingRule``: soft tokens) decides each step of the samples.
    ``on_batch(problems, batch)`` is called with each rollout batch this process samples (the
    entropy profile, ``explorl.eval.entropy_profile``, reads the tokens there).
    """
    from explorl.tasks.guard import GuardedVerifier
    if thinking is not None and not getattr(engine, "soft_tokens", False):
        raise ValueError(f"evaluating with soft tokens needs the built-in engine (model.backend auto, fast or hf), "
                         f"not {type(engine).__name__}")
    own = verifier is None
    verifier = verifier or GuardedVerifier(tasks)
    try:
        per_problem = _sample_and_score(engine, verifier, eval_sets, samples, temperature, max_new_tokens,
                                        seed, rows_per_batch, ledger, dp, thinking, on_batch)
    finally:
        if own:
            verifier.close()
    return summarize(per_problem, samples, ks)


def _sample_and_score(engine, verifier, eval_sets, samples, temperature, max_new_tokens, seed, rows_per_batch,
                      ledger, dp=None, thinking=None, on_batch=None):
    problems = [p for src in eval_sets for p in eval_sets[src]]
    chunk = max(1, rows_per_batch // samples)
    starts = list(range(0, len(problems), chunk))
    # chunk i -> (rows, faults); the chunks are the same on any number of ranks, each rank runs its share
    distributed = dp is not None and dp.distributed
    done = {i: _chunk(engine, verifier, problems[starts[i]:starts[i] + chunk], samples, temperature,
                      max_new_tokens, seed + starts[i], thinking, on_batch)
            for i in (dp.chunks(len(starts)) if distributed else range(len(starts)))}
    if distributed:
        for part in dp.all_gather_objects(done):
            done.update(part)
    out = []
    for i in range(len(starts)):
        rows, faults = done[i]
        if ledger is not None:
            ledger.add(samples * len(rows), faults)
        out.extend(rows)
    return out


#: the fields of ``per_problem``, in the order ``_chunk`` gives them
PER_PROBLEM = ("source", "correct", "distinct", "entropy_sum", "tokens", "wrong_tokens", "wrong", "id")


def _chunk(engine, verifier, part, samples, temperature, max_new_tokens, seed, thinking=None,
           on_batch=None) -> tuple[list, list]:
    """One tuple per problem of ``part`` (fields ``PER_PROBLEM``), and the verifier's faults."""
    per_problem = []
    batch = engine.rollout(part, [samples] * len(part), [temperature] * max_new_tokens, seed=seed,
                           **({} if thinking is None else {"thinking": thinking}))
    if on_batch is not None:
        on_batch(part, batch)
    rewards, faults = verifier.score([part[g] for g in batch.group.tolist()], batch.texts)
    lengths = batch.mask.sum(-1).tolist()
    for i, problem in enumerate(part):
        rows = (batch.group == i).nonzero().squeeze(-1).tolist()
        correct = [batch.texts[r] for r in rows if rewards[r] >= 1.0]
        wrong = [r for r in rows if rewards[r] < 1.0]
        ent = float((batch.entropy[rows] * batch.mask[rows]).sum())
        per_problem.append((problem.source, len(correct), len(set(c.strip() for c in correct)),
                            ent, float(batch.mask[rows].sum()), float(sum(lengths[r] for r in wrong)), len(wrong),
                            str(problem.id)))
    return per_problem, faults


def summarize(per_problem, samples, ks) -> dict:
    by_source = defaultdict(list)
    for row in per_problem:
        by_source[row[0]].append(row)
        by_source["all"].append(row)
    out = {f"pass@{k}": {} for k in ks}
    out["entropy"], out["response_length"], out["distinct_correct"] = {}, {}, {}
    for src, rows in by_source.items():
        for k in ks:
            out[f"pass@{k}"][src] = sum(pass_at_k(samples, r[1], k) for r in rows) / len(rows)
        out["entropy"][src] = sum(r[3] for r in rows) / max(1.0, sum(r[4] for r in rows))
        out["response_length"][src] = sum(r[4] for r in rows) / (samples * len(rows))
        out["distinct_correct"][src] = sum(r[2] for r in rows) / len(rows)
    out["tokens"] = int(sum(r[4] for r in per_problem))
    out["samples"] = samples
    out["per_problem"] = {field: [row[i] for row in per_problem] for i, field in enumerate(PER_PROBLEM)}
    return out


def format_table(results: dict, ks=(1, 16)) -> str:
    sources = [s for s in results[f"pass@{ks[0]}"] if s != "all"] + ["all"]
    head = f"{'source':<16}" + "".join(f"{'pass@' + str(k):>10}" for k in ks)
    lines = [head] + [f"{s:<16}" + "".join(f"{results[f'pass@{k}'][s]:>10.3f}" for k in ks) for s in sources]
    return "\n".join(lines)
