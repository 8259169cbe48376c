"""``explorl check-task``: check every task source of a config against the policy's tokenizer
and print a report per source.

For each entry of ``tasks:`` (any kind): the source is built (a bad file, row, option or
verifier fails here), ``check_task`` runs in the verifier process under the run's
``verify.*`` settings (determinism, reference answers score 1, adversarial completions score
0 without raising, each within the time limit), and its prompts, as the model will read them
(``prompt.template``), and reference answers must survive the policy's tokenizer and fit its
context: the testbed's character tokenizer, or the tokenizer saved with ``model.path`` (the
model's weights are not loaded). Exit code 0 when every source passes, 1 otherwise.
"""
from __future__ import annotations

import time


def _testbed_tokenizer(cfg, sources: dict, failures: dict):
    """The testbed tokenizer for the sources that built (its alphabet follows their characters);
    a source whose text it cannot hold fails, and the alphabet is made without it."""
    from explorl.policy.tokenizer import testbed_tokenizer
    from explorl.tasks import TaskMix
    from explorl.tasks.alphabet import mix_alphabet
    template = cfg.prompt.template
    extra = template.replace("{prompt}", "") if template not in ("raw", "chat") else ""
    warmup = [TaskMix.from_config(cfg.model.warmup.tasks)] if cfg.model.warmup.tasks is not None else []
    pending = dict(sources)
    while True:
        try:
            alphabet = mix_alphabet(([TaskMix(pending)] if pending else []) + warmup, extra_text=extra)
            return testbed_tokenizer(alphabet), cfg.model.tiny.max_positions, "model.tiny.max_positions"
        except ValueError as err:
            bad = next((name for name in pending if f"task source {name!r}" in str(err)), None)
            if bad is None:
                raise
            failures.setdefault(bad, []).append(f"the testbed tokenizer: {err}")
            del pending[bad]


def _saved_tokenizer(path: str):
    from transformers import AutoConfig, AutoTokenizer

    from explorl.policy.model import model_folder
    path = model_folder(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    limit = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
    return tokenizer, limit, "max_position_embeddings"


def check_tasks(cfg, problems: int = 20, out=print) -> bool:
    """Check and report every source of ``cfg.tasks``; ``True`` when all pass."""
    from explorl.policy.prompts import for_config
    from explorl.tasks import TaskMix
    from explorl.tasks.encoding import check_encodable
    from explorl.tasks.guard import GuardedVerifier
    from explorl.tasks.kinds import make_task_source

    if not isinstance(cfg.tasks, dict) or not cfg.tasks:
        raise ValueError(f"tasks: at least one task source is needed, got {cfg.tasks!r}")
    failures: dict[str, list[str]] = {}
    sources, kinds = {}, {}
    for name, opts in cfg.tasks.items():
        kinds[name] = opts.get("kind", "built-in") if isinstance(opts, dict) else "built-in"
        try:
            if opts is not None and not isinstance(opts, dict):
                raise ValueError(f"tasks.{name}: expected a mapping of options, got {opts!r}")
            options = {k: v for k, v in (opts or {}).items() if k != "weight"}
            sources[name] = make_task_source(str(name), options, f"tasks.{name}")
        except (ValueError, FileNotFoundError) as err:
            failures[name] = [f"building the source: {err}"]
        except Exception as err:  # a user's class failing in its own way fails its own entry only
            failures[name] = [f"building the source: {type(err).__name__}: {err}"]

    try:
        if cfg.model.path is None:
            tokenizer, limit, limit_name = _testbed_tokenizer(cfg, sources, failures)
        else:
            tokenizer, limit, limit_name = _saved_tokenizer(cfg.model.path)
        prompt_format, tokenizer_error = for_config(cfg, tokenizer), None
    except Exception as err:
        tokenizer_error = f"the tokenizer: {type(err).__name__}: {err}"

    reports = {}
    verifier = GuardedVerifier(TaskMix(sources), cfg.verify.timeout, cfg.verify.isolate) if sources else None
    try:
        for name, source in sources.items():
            reasons = failures.setdefault(name, [])
            start = time.perf_counter()
            try:
                reports[name] = verifier.check_source(name, n=problems)
                reports[name]["check_s"] = time.perf_counter() - start
            except ValueError as err:
                reasons.append(f"check_task: {err}")
            if tokenizer_error is not None:
                reasons.append(tokenizer_error)
            elif not any(r.startswith("the testbed tokenizer") for r in reasons):
                try:
                    check_encodable(TaskMix({name: source}), tokenizer, limit, cfg.train.max_new_tokens,
                                    limit_name=limit_name, prompt_format=prompt_format)
                except ValueError as err:
                    reasons.append(f"the tokenizer: {err}")
    finally:
        if verifier is not None:
            verifier.close()

    what = "the testbed tokenizer" if cfg.model.path is None else f"the tokenizer of model.path={cfg.model.path!r}"
    for name in cfg.tasks:
        reasons = failures.get(name, [])
        out(f"task source {name!r} ({kinds[name]}): {'FAIL' if reasons else 'pass'}")
        verifier = getattr(sources.get(name), "verifier", None)
        if verifier is not None:
            out(f"  verifier: {verifier.registered_name}, extractor {verifier.extractor.name}"
                + (f", format reward {verifier.format_reward:g}" if verifier.format_reward else ""))
        report = reports.get(name)
        if report is not None:
            out(f"  problems checked: {report['problems']} ({report['unique_ids']} distinct) in "
                f"{report['check_s']:.1f} s")
            out(f"  prompt: up to {report['max_prompt_chars']} characters (mean {report['mean_prompt_chars']:.1f}); "
                f"answer: up to {report['max_answer_chars']} characters")
            out(f"  slowest verification: {report['slowest_verify_s'] * 1000:.2f} ms")
        if not reasons and name in sources:
            out(f"  tokenizer: prompts (prompt.template: {cfg.prompt.template}) and reference answers survive "
                f"{what} and fit its context")
        for reason in reasons:
            out(f"  reason: {reason}")
    failed = [name for name in cfg.tasks if failures.get(name)]
    out(f"{len(cfg.tasks)} task sources: {len(cfg.tasks) - len(failed)} pass"
        + (f", {len(failed)} fail ({', '.join(map(str, failed))})" if failed else ""))
    return not failed
