"""The studies of docs/studies.md §5d: SwiReasoning (hypothesis T5) and CTRLS (T6) on the forking
regime, each against plain sampling of the same frozen warm start.

    python docs/latent_studies.py sample --config configs/studies/forking.yaml \\
        --decoding '{name: swireasoning, window_size: 4, max_switch_count: 2}' --out runs/latent_forking
    python docs/latent_studies.py report --out runs/latent_forking --ctrls runs/ctrls_forking/runs/ctrls

``sample`` evaluates the config's starting model on its held-out problems twice, with the same
sampling seed: plain sampling (what ``explorl eval --config`` prints) and the decoding given
(what ``explorl eval --config ... --decoding`` prints), and writes both results, per problem,
with the decoding's engagement: the share of response positions fed a soft token
(``decode/soft_frac``) and, for SwiReasoning, its latent↔explicit switches per response.
``report`` pairs them by problem with the board's bootstrap (``explorl.compare.stats``):
pass@1, pass@k_max and tokens per response; with ``--ctrls`` (a recipe folder of
``explorl compare``), each CTRLS seed's end evaluation (its trained transition policy) against
plain sampling — the same frozen model and sampling seed for every training seed, so it pairs
by seed and by problem — and against its start (the untrained transition policy), with
Benjamini–Hochberg over the report's comparisons.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def sample(args) -> None:
    from explorl.config import load_config
    from explorl.eval.heldout import held_out_evaluation
    from explorl.policy import load_policy

    cfg = load_config(args.config, args.set)
    model, tokenizer = load_policy(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with held_out_evaluation(cfg, model, tokenizer) as (run, ks):
        _sample_both(args, run, ks, cfg.eval.samples, out)


def _sample_both(args, run, ks, samples: int, out: Path) -> None:
    """Plain sampling, then the decoding of ``--decoding`` with its engagement counted."""
    import yaml

    from explorl.atomic import write_text_atomic
    from explorl.eval.evaluate import format_table
    from explorl.explore.decoding.swireasoning import SwitchThinking
    from explorl.policy.soft import soft_metrics
    from explorl.registry import build

    plain = run(None)
    write_text_atomic(out / "plain.json", json.dumps(plain))
    print(f"plain sampling:\n{format_table(plain, ks)}\ntokens per response "
          f"{plain['tokens'] / (len(plain['per_problem']['id']) * samples):.2f}")

    spec = yaml.safe_load(args.decoding)
    rule = build("decoding", spec, "--decoding").thinking(0, evaluating=True)
    rule.record = True  # keep the SoftInputs record: decode/soft_frac is read from it
    seen = {"fed": 0.0, "positions": 0.0, "rows": 0, "switches": 0, "examples": []}
    if isinstance(rule, SwitchThinking):
        begin = rule.start

        def start(*a, **k):
            begin(*a, **k)
            switch = rule.state.switch

            def counted(t, entropy, window):
                to_explicit, to_latent = switch(t, entropy, window)
                seen["switches"] += int(to_explicit.sum() + to_latent.sum())
                return to_explicit, to_latent
            rule.state.switch = counted
        rule.start = start

    def on_batch(problems, batch):
        m = soft_metrics(batch)
        positions = float(batch.mask.sum())
        seen["fed"] += m.get("decode/soft_frac", 0.0) * positions
        seen["positions"] += positions
        seen["rows"] += int(batch.mask.shape[0])
        rows = range(0, len(batch.texts), max(1, len(batch.texts) // 8))
        shown = [f"{batch.problems[int(batch.group[r])].prompt} {batch.texts[r]}" for r in rows]
        seen["examples"] += shown[:8 - len(seen["examples"])]

    other = run(rule, on_batch)
    other["engagement"] = {"decode/soft_frac": seen["fed"] / max(1.0, seen["positions"])}
    if isinstance(rule, SwitchThinking):
        other["engagement"]["switches_per_response"] = seen["switches"] / max(1, seen["rows"])
    other["decoding"], other["examples"] = spec, seen["examples"]
    write_text_atomic(out / "decoding.json", json.dumps(other))
    print(f"{args.decoding}:\n{format_table(other, ks)}\ntokens per response "
          f"{other['tokens'] / (len(other['per_problem']['id']) * samples):.2f}; {other['engagement']}")
    print("first responses:\n" + "\n".join(seen["examples"]))


def report(args) -> None:
    from explorl.compare import stats
    from explorl.compare.board import delta_cell
    from explorl.compare.regime import Eval

    out = Path(args.out)
    parts = {name: json.loads((out / f"{name}.json").read_text()) for name in ("plain", "decoding")}
    plain, other = (Eval.from_json(parts[n], str(out / f"{n}.json")) for n in ("plain", "decoding"))
    if plain.ids != other.ids or plain.n != other.n:
        raise ValueError(f"{out}: plain.json and decoding.json did not evaluate the same problems and samples")
    k_max = max(int(k[5:]) for k in parts["plain"] if k.startswith("pass@"))
    one = np.ones((1, len(plain.ids)))
    spec = parts["decoding"]["decoding"]
    name = spec if isinstance(spec, str) else spec["name"]
    rows = [(f"{name} − plain, pass@1", stats.paired_bootstrap(other.pass_at(1)[None], one,
                                                               plain.pass_at(1)[None], one, null=-0.01)),
            (f"{name} − plain, pass@{k_max}", stats.paired_bootstrap(other.pass_at(k_max)[None], one,
                                                                   plain.pass_at(k_max)[None], one)),
            (f"{name} − plain, tokens per response",
             stats.paired_bootstrap(np.asarray(parts["decoding"]["per_problem"]["tokens"])[None], one * other.n,
                                    np.asarray(parts["plain"]["per_problem"]["tokens"])[None], one * plain.n))]
    if args.ctrls:
        seeds = sorted(Path(args.ctrls).glob("seed*"))
        evals = [json.loads((s / "eval.json").read_text()) for s in seeds]
        end = [Eval.from_json(ev["end"], f"{s}/eval.json (end)") for s, ev in zip(seeds, evals)]
        start = [Eval.from_json(ev["start"], f"{s}/eval.json (start)") for s, ev in zip(seeds, evals)]
        for ev in end + start:
            if ev.ids != plain.ids or ev.n != plain.n:
                raise ValueError(f"{args.ctrls}: its evaluations are not on the problems and samples of {out}")
        ones = np.ones((len(seeds), len(plain.ids)))
        for k in (1, k_max):
            e, s = np.stack([x.pass_at(k) for x in end]), np.stack([x.pass_at(k) for x in start])
            frozen = np.tile(plain.pass_at(k), (len(seeds), 1))  # the same frozen model and sampling seed
            rows.append((f"ctrls end − plain, pass@{k}", stats.paired_bootstrap(e, ones, frozen, ones)))
            rows.append((f"ctrls end − ctrls start, pass@{k}", stats.paired_bootstrap(e, ones, s, ones)))
    stats.benjamini_hochberg([c for _, c in rows])
    print(f"{len(plain.ids)} problems x {plain.n} samples; Δ [95% interval] q (Benjamini–Hochberg over these "
          f"{len(rows)}; the pass@1 row of {name} tests against −0.01, T5's margin)")
    for label, c in rows:
        print(f"{label}: {c.values[0]:.3f} vs {c.values[1]:.3f}, Δ {delta_cell(c)}"
              + (f", ratio {c.values[0] / c.values[1]:.3f}" if "tokens" in label else ""))
    if args.ctrls:
        from explorl.compare.results import read_metrics
        for seed in seeds:
            ms = read_metrics(seed)
            mean = {k: float(np.mean([m[k] for m in ms if k in m]))
                    for k in ("decode/soft_frac", "decode/ctrls_boundaries")}
            print(f"ctrls {seed.name}: {len(ms)} steps, mean decode/soft_frac {mean['decode/soft_frac']:.3f}, "
                  f"boundaries per step {mean['decode/ctrls_boundaries']:.0f}, transition-policy entropy "
                  f"{ms[0]['decode/ctrls_entropy']:.3f} -> {ms[-1]['decode/ctrls_entropy']:.3f}")
    if "engagement" in parts["decoding"]:
        print(f"{name} engagement: {parts['decoding']['engagement']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--config", required=True)
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--decoding", default="swireasoning")
    s.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--out", required=True)
    r.add_argument("--ctrls", default=None)
    args = p.parse_args()
    sample(args) if args.command == "sample" else report(args)


if __name__ == "__main__":
    main()
