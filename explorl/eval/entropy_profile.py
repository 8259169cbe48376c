"""The token-entropy profile of held-out responses: how much of a response is a fork, and where.

Every sampled response token carries its entropy (nats, the policy's distribution at temperature
1, as the engine records it) and a role: the role its source gives the token's first character
in the worked form (``TaskSource.text_roles``: for ``countdown_search``, ``decision`` for the
combination a move tries, ``arithmetic`` for its result, ``control`` for going deeper, backing
up or answering, ``answer`` for the final expression), ``end`` for the stop token, and
``response`` where the source names no roles. The profile is the share of tokens above a
threshold (0.5 nats: a token where the policy spreads over at least two continuations), and per
role: its tokens, their mean entropy, the share of them above the threshold and the share of all
high-entropy tokens that sit there.

``explorl entropy --config FILE`` prints it (with pass@k) for a config's starting model, and
``--run RUN`` for a run's latest checkpoint.
"""
from __future__ import annotations

from collections import defaultdict

THRESHOLD = 0.5
END, UNNAMED = "end", "response"


def token_roles(source, pieces: list[str], stops: list[bool]) -> list[str]:
    """The role of each response token, from the decoded text of each token (``pieces``) and
    whether it is a stop token (``stops``)."""
    text = "".join(p for p, stop in zip(pieces, stops) if not stop)
    chars = source.text_roles(text) if source is not None else None
    if chars is not None and len(chars) != len(text):
        raise ValueError(f"{type(source).__name__}.text_roles gave {len(chars)} roles for {len(text)} characters")
    out, at = [], 0
    for piece, stop in zip(pieces, stops):
        if stop:
            out.append(END)
            continue
        out.append(UNNAMED if chars is None or not piece else chars[at])
        at += len(piece)
    return out


def profile(rows, threshold: float = THRESHOLD) -> dict:
    """The profile of ``rows``, each ``(entropies, roles)`` of one response (one value per token).

    Returns ``{"tokens", "mean", "above", "threshold", "roles": {role: {"tokens", "share", "mean",
    "above", "of_above"}}}``: ``above`` is the share of tokens with entropy > ``threshold``; per
    role, ``share`` is its share of all tokens, ``above`` the share of its own tokens above the
    threshold and ``of_above`` its share of all tokens above it.
    """
    count, total, high = defaultdict(int), defaultdict(float), defaultdict(int)
    for entropies, roles in rows:
        if len(entropies) != len(roles):
            raise ValueError(f"entropy profile: {len(entropies)} entropies for {len(roles)} roles")
        for h, role in zip(entropies, roles):
            count[role] += 1
            total[role] += float(h)
            high[role] += float(h) > threshold
    n, n_high = sum(count.values()), sum(high.values())
    if n == 0:
        raise ValueError("entropy profile: no response tokens")
    return {"tokens": n, "mean": sum(total.values()) / n, "above": n_high / n, "threshold": threshold,
            "roles": {role: {"tokens": count[role], "share": count[role] / n, "mean": total[role] / count[role],
                             "above": high[role] / count[role],
                             "of_above": high[role] / n_high if n_high else 0.0}
                      for role in sorted(count, key=lambda r: -count[r])}}


class ProfileCollector:
    """Collects ``(entropies, roles)`` from rollout batches (``evaluate``'s ``on_batch``)."""

    def __init__(self, tasks, tokenizer, stop_ids):
        self.tasks, self.tokenizer, self.stop_ids = tasks, tokenizer, set(int(i) for i in stop_ids)
        self.rows = []

    def __call__(self, problems, batch) -> None:
        for r in range(batch.size):
            n = int(batch.mask[r].sum())
            ids = batch.response_ids[r, :n].tolist()
            pieces = [self.tokenizer.decode([i]) for i in ids]
            source = self.tasks.sources.get(problems[int(batch.group[r])].source)
            roles = token_roles(source, pieces, [i in self.stop_ids for i in ids])
            self.rows.append((batch.entropy[r, :n].tolist(), roles))

    def profile(self, threshold: float = THRESHOLD) -> dict:
        return profile(self.rows, threshold)


def format_profile(result: dict) -> str:
    t = result["threshold"]
    lines = [f"token entropy of held-out responses: {result['tokens']} tokens, mean {result['mean']:.3f} nats, "
             f"share above {t:g} nats {result['above']:.3f}",
             f"{'role':<12}{'tokens':>9}{'share':>8}{'mean':>8}{f'>{t:g}':>8}{f'of >{t:g}':>10}"]
    for role, r in result["roles"].items():
        lines.append(f"{role:<12}{r['tokens']:>9}{r['share']:>8.3f}{r['mean']:>8.3f}{r['above']:>8.3f}"
                     f"{r['of_above']:>10.3f}")
    return "\n".join(lines)
