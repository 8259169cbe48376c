"""The test-time scaling table of docs/studies.md §5: ``explorl eval --search`` written for three
sampling seeds (``runs/search_start.json`` at eval.seed 1234, ``runs/search_start_seed{1,2}.json``),
the pass rate's mean ± sd over them, and best-of-N's mean pass rate and peak KV positions at the
tokens each other row spent (linear between best-of-N's budgets; blank outside its range).

    python docs/search_summary.py
"""
import json
import statistics as st

FILES = ("runs/search_start.json", "runs/search_start_seed1.json", "runs/search_start_seed2.json")


def mean(rows, key):
    return st.mean(r[key] for r in rows)


def at_tokens(curve, tokens):
    """(pass, KV positions) of ``curve`` [(tokens, pass, kv)] at ``tokens``, linear between points."""
    for (x0, y0, k0), (x1, y1, k1) in zip(curve, curve[1:]):
        if x0 <= tokens <= x1:
            f = (tokens - x0) / (x1 - x0)
            return y0 + f * (y1 - y0), k0 + f * (k1 - k0)
    return None


def main():
    runs = [json.load(open(path))["rows"] for path in FILES]
    rows_by_point = list(zip(*runs))
    best = [(mean(rs, "tokens"), mean(rs, "pass_rate"), mean(rs, "kv_tokens"))
            for rs in rows_by_point if rs[0]["method"] == "best_of_n"]
    print("| method | N | pass rate (mean ± sd; seeds 1234, 1, 2) | tokens | peak KV positions "
          "| best-of-N at these tokens: pass, KV |")
    print("|---|---|---|---|---|---|")
    for rs in rows_by_point:
        p = [r["pass_rate"] for r in rs]
        tokens = mean(rs, "tokens")
        there = None if rs[0]["method"] == "best_of_n" else at_tokens(best, tokens)
        print(f"| {rs[0]['method']} | {rs[0]['n']} | {st.mean(p):.3f} ± {st.stdev(p):.3f} | {tokens:.1f} | "
              f"{mean(rs, 'kv_tokens'):.1f} | {'' if there is None else f'{there[0]:.3f}, {there[1]:.1f}'} |")


if __name__ == "__main__":
    main()
