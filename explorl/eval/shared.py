"""The start-of-run evaluation, computed once and shared by every run that would compute the
same thing: the same starting model, task sources, evaluation settings, prompt format, response
length and verifier settings, and the same explorl source code (and, where ``reference:``
starts the policy at a soup or one of its members, those members). A study of 20 recipes × 3
seeds on one warm start evaluates the start once instead of 60 times.

The key hashes all of that, the source of every ``explorl`` module included (a fix to a
verifier or to the sampler must not reuse an evaluation made before it), and, for a model
folder (``model.path``), the name, size and modification time of each of its files. Entries
live in ``EXPLORL_HOME/evals/start-<key>.json``, written atomically; ``eval.share_start: false``
turns sharing off. The recipe, the seed and the training settings are not in the key: before
the first step they cannot change what the model answers, except a decoding that evaluates with
soft tokens (``Decoding.thinking``): its configuration is then in the key.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from explorl.policy.model import cache_home, config_key, model_folder

PACKAGE = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """SHA-256 over the explorl package's Python sources (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _folder_fingerprint(path: str) -> list:
    folder = Path(path)
    if not folder.is_dir():
        return [path]
    return [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()]


def _reference_start(cfg) -> list | None:
    """What the ``reference:`` section changes of the policy's start (``None``: nothing): where it
    starts, the weights, and each member's files or warm start."""
    from explorl.policy.reference import member_config, reference_component
    from explorl.policy.warmup import warm_model_dir
    reference = reference_component(cfg)
    if not reference.members:
        return None
    members = [_folder_fingerprint(m["path"]) if "path" in m
               else warm_model_dir(member_config(cfg, m["warmup_seed"])).name for m in reference.members]
    return [reference.spec(), members]


def start_eval_path(cfg) -> Path | None:
    """Where the start evaluation of ``cfg`` is kept (``None`` with ``eval.share_start: false``)."""
    if not cfg.eval.share_start:
        return None
    from explorl.policy.warmup import warm_model_dir
    d = cfg.to_dict()
    model = {k: v for k, v in d["model"].items() if k != "device"}  # where it runs does not change its answers
    start = _folder_fingerprint(model_folder(cfg.model.path)) if cfg.model.path else str(warm_model_dir(cfg).name)
    reference = _reference_start(cfg)
    if reference is not None:  # the policy starts at a soup or at one of its members
        start = [start, reference]
    evaluation = {k: v for k, v in d["eval"].items() if k not in ("every_tokens", "every_samples", "share_start")}
    parts = [model, start, d["tasks"], evaluation, d["prompt"], cfg.train.max_new_tokens, d["verify"],
             source_fingerprint()]
    if _decides_steps(cfg):  # a decoding with soft tokens evaluates with them: it changes the answers
        parts.append(d["decoding"])
    key = config_key(*parts)
    return cache_home() / "evals" / f"start-{key}.json"


def _decides_steps(cfg) -> bool:
    from explorl.registry import build
    return build("decoding", cfg.decoding).thinking(0, evaluating=True) is not None


def load_start_eval(cfg, warn=print) -> dict | None:
    """The shared start evaluation of ``cfg``, or ``None``; a damaged entry is reported and
    ignored (the run evaluates and writes it again)."""
    path = start_eval_path(cfg)
    if path is None or not path.exists():
        return None
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as err:
        warn(f"warning: the shared start evaluation {path} cannot be read ({err}); evaluating again")
        return None
    if not isinstance(results, dict) or "pass@1" not in results:
        warn(f"warning: the shared start evaluation {path} holds no evaluation; evaluating again")
        return None
    return results


def store_start_eval(cfg, results: dict) -> None:
    from explorl.atomic import write_text_atomic
    path = start_eval_path(cfg)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(results, indent=2))
