"""The pre-registered hypotheses (``docs/hypotheses.md``) in the form the board evaluates
(``configs/studies/hypotheses.yaml``), and their verdicts.

Each entry keeps the doc's row word for word (``hypothesis``, ``engaged_when``) and adds what the
board needs to judge it: the recipe's mechanism components whose engagement counts
(``engaged``: registered names; every component of the recipe that declares a criterion when
absent) and ``tests``, each one comparison in one regime::

    {regime: default, metric: pass@1, against: grpo, at_least: 0.01}

``metric``: ``pass@1``, ``pass@kmax`` (the regime's declared k_max), ``pass@<k>``, ``entropy``
(held-out token entropy), ``distinct`` (distinct correct answers per problem), ``wrong_length``
(mean length of wrong answers), ``reach@<f>`` (held-out pass@1 at f of the token budget against
GRPO's at the end), ``groups_with_gradient``, ``train_reward`` (per seed). ``against``: a row
label (``grpo``), ``{control: <match>}`` (the recipe's control of that kind) or
``{best_of: [labels]}`` (the one with the higher mean). The size: ``at_least: x`` (absolute;
x < 0 is a non-inferiority margin, tested against x), ``at_least_relative: r`` or
``at_most_relative: r`` (relative to the ``against`` value). ``not_evaluated: reason`` marks a
hypothesis the board cannot judge.

The rule (docs/hypotheses.md): a test passes when its comparison is significant (q < 0.05,
Benjamini–Hochberg over the regime's table) in the stated direction and its point estimate
reaches the stated size; a hypothesis is **supported** when every test passes and its mechanism
engaged, **not engaged** when the mechanism did not act in a regime it is tested in, **not
supported** otherwise; **not run** where a regime or row it needs has no runs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from explorl.config import CONFIG_DIR

HYPOTHESES = CONFIG_DIR / "studies" / "hypotheses.yaml"
DOC = CONFIG_DIR.parent / "docs" / "hypotheses.md"
SIZES = ("at_least", "at_least_relative", "at_most_relative")


@dataclass
class Claim:
    regime: str
    metric: str
    against: object
    size: str
    value: float

    def describe(self) -> str:
        against = (self.against if isinstance(self.against, str) else
                   f"its {self.against['control']} control" if "control" in self.against else
                   f"the best of {', '.join(self.against['best_of'])}")
        if self.metric.startswith("reach@"):
            return (f"{self.regime}: held-out pass@1 at {self.metric[6:]} of the budget − {against}'s final "
                    f"≥ {self.value:+g}")
        how = {"at_least": f"≥ {against} {self.value:+g}",
               "at_least_relative": f"≥ {against} {self.value:+.0%}",
               "at_most_relative": f"≤ {against} {self.value:+.0%}"}[self.size]
        return f"{self.regime}: {self.metric} {how}"


@dataclass
class Hypothesis:
    id: str
    recipe: str | None
    hypothesis: str
    engaged_when: str
    engaged: list[str] | None = None
    tests: list[Claim] = field(default_factory=list)
    not_evaluated: str | None = None
    control: bool = False


def load(path: Path = HYPOTHESES) -> list[Hypothesis]:
    """Every hypothesis of the file, each field checked (errors name the id and key)."""
    from explorl.compare.regime import known_metric
    from explorl.config import load_yaml
    data = load_yaml(path)
    out = []
    for item in data.get("hypotheses") or []:
        hid = item.get("id")
        where = f"{path}: {hid}"
        unknown = set(item) - {"id", "recipe", "hypothesis", "engaged_when", "engaged", "tests", "not_evaluated",
                               "control"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        tests = []
        for i, t in enumerate(item.get("tests") or []):
            sizes = [k for k in SIZES if k in t]
            if set(t) - {"regime", "metric", "against", *SIZES} or len(sizes) != 1 or "regime" not in t:
                raise ValueError(f"{where}: tests[{i}] must have regime, metric, against and one of "
                                 f"{', '.join(SIZES)}, got {t!r}")
            if not known_metric(t["metric"]):
                raise ValueError(f"{where}: tests[{i}]: unknown metric {t['metric']!r}")
            against = t.get("against", "grpo")
            if not (isinstance(against, str) or (isinstance(against, dict) and len(against) == 1
                                                and set(against) <= {"control", "best_of"})):
                raise ValueError(f"{where}: tests[{i}]: against must be a label, {{control: M}} or {{best_of: [...]}}")
            tests.append(Claim(t["regime"], t["metric"], against, sizes[0], float(t[sizes[0]])))
        if not tests and not item.get("not_evaluated") and not item.get("control"):
            raise ValueError(f"{where}: give tests, or not_evaluated with the reason, or control: true")
        out.append(Hypothesis(id=str(hid), recipe=item.get("recipe"), hypothesis=item["hypothesis"],
                              engaged_when=item["engaged_when"], engaged=item.get("engaged"), tests=tests,
                              not_evaluated=item.get("not_evaluated"), control=bool(item.get("control"))))
    ids = [h.id for h in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: an id appears twice")
    return out


def doc_rows(path: Path = DOC) -> dict[str, dict]:
    """The rows of the hypothesis tables of ``docs/hypotheses.md``: id -> {recipe, hypothesis,
    engaged_when} (cells as written, the recipe without its backquotes)."""
    rows, header = {}, None
    for line in Path(path).read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        if "id" not in header:
            continue
        row = dict(zip(header, cells))
        rows[row["id"]] = {"recipe": re.sub(r"`([^`]*)`.*", r"\1", row["recipe"]),
                           "hypothesis": row["hypothesis here"], "engaged_when": row["engaged when"]}
    return rows


# ---- verdicts -------------------------------------------------------------------------------
@dataclass
class Outcome:
    verdict: str                    # supported | not supported | not engaged | pending | not run | not evaluated | control
    evidence: list[str] = field(default_factory=list)


def passes(test: Claim, comparison) -> bool:
    """Significant in the stated direction and at least the stated size (module docstring)."""
    if comparison is None or not comparison.significant:
        return False
    est, rel = comparison.estimate, comparison.relative
    if test.size == "at_least":
        return est > comparison.null and est >= test.value
    if test.size == "at_least_relative":
        return est > 0 and rel is not None and rel >= test.value
    return est < 0 and rel is not None and rel <= test.value


def null_of(test: Claim) -> float:
    """The value a test's comparison is tested against: a negative absolute margin
    (non-inferiority, "not lower than GRPO − 0.01") or 0."""
    return test.value if test.size == "at_least" and test.value < 0 else 0.0


def verdict(h: Hypothesis, results: list[tuple[Claim, str, object]]) -> Outcome:
    """``results``: per test, its state (``ok``, ``pending: why``, ``not run: why``, ``not engaged: why``) and its
    comparison (``explorl.compare.stats.Comparison`` or None)."""
    if h.control:
        return Outcome("control", ["a control, no hypothesis of its own"])
    if h.not_evaluated:
        return Outcome("not evaluated", [h.not_evaluated])
    evidence = []
    for test, state, comparison in results:
        if state != "ok":
            evidence.append(f"{test.describe()}: {state}")
        else:
            c = comparison
            evidence.append(f"{test.describe()}: Δ {c.estimate:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"
                            + (f", {c.relative:+.1%}" if c.relative is not None and "relative" in test.size else "")
                            + (f", q {c.q:.3g}" if c.q is not None else ", not tested")
                            + (" — passes" if passes(test, c) else " — fails"))
    states = [state for _, state, _ in results]
    if any(s.startswith("pending") for s in states):  # engagement too may change with the seeds to come
        return Outcome("pending", evidence)
    if any(s.startswith("not engaged") for s in states):
        return Outcome("not engaged", evidence)
    if any(s.startswith("not run") for s in states):
        return Outcome("not run", evidence)
    ok = all(passes(t, c) for t, _, c in results)
    return Outcome("supported" if ok else "not supported", evidence)
