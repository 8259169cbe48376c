"""Supervised warm start of the tiny testbed model, cached on disk by its configuration.

RL needs a partly competent policy to have anything to reinforce; this trains the
freshly built model on (prompt, reference answer) pairs from the task mix with the loss on
answer tokens only, then saves it with ``save_pretrained`` under ``EXPLORL_HOME``. With
``model.warmup.references_per_problem: k``, each problem appears k times in its batch, each with
a reference drawn on its own (``TaskSource.sample_reference``): a source whose worked answers
take several forms (``countdown_search``) teaches them side by side for the same prompt.
"""
from __future__ import annotations

import random
import time

import torch

from explorl.folder_lock import FolderLock
from explorl.policy.model import build_tiny, cache_home, config_key, load_pretrained, save_atomic
from explorl.policy.prompts import for_config
from explorl.tasks import TaskMix
from explorl.tasks.alphabet import mix_alphabet


def warmup_tasks(cfg) -> dict:
    return cfg.model.warmup.tasks if cfg.model.warmup.tasks is not None else cfg.tasks


def testbed_alphabet(cfg) -> str:
    """The testbed tokenizer's alphabet: ``ALPHABET``, extended to the characters of the run's
    tasks, the warm-up tasks and the prompt template when they need more (``explorl.tasks.alphabet``)."""
    mixes = [TaskMix.from_config(cfg.tasks)]
    if cfg.model.warmup.tasks is not None:
        mixes.append(TaskMix.from_config(cfg.model.warmup.tasks))
    template = cfg.prompt.template
    extra = template.replace("{prompt}", "") if template not in ("raw", "chat") else ""
    return mix_alphabet(mixes, extra_text=extra)


def data_seed(cfg) -> int:
    """The seed of the warm-up's data order: ``model.warmup.seed``, or ``model.tiny.seed`` (which
    also seeds the initialisation) when unset."""
    warm = cfg.model.warmup
    return warm.seed if warm.seed is not None else cfg.model.tiny.seed


def warm_model_dir(cfg):
    tiny, warm = cfg.model.tiny, cfg.model.warmup
    # a data seed equal to the init seed is the warm start made before warmup.seed existed: same key
    settings = {k: v for k, v in vars(warm).items() if k not in ("tasks", "seed", "references_per_problem")}
    if data_seed(cfg) != tiny.seed:
        settings["seed"] = data_seed(cfg)
    if warm.references_per_problem != 1:  # absent at 1: the warm starts made before the key existed
        settings["references_per_problem"] = warm.references_per_problem
    key = config_key(vars(tiny), settings,
                     warmup_tasks(cfg), testbed_alphabet(cfg), "v3",  # v2: countdown targets never equal a given number; v3: byte-level char tokenizer
                     *([] if cfg.prompt.template == "raw" else [vars(cfg.prompt)]))  # the warm start learns the template
    return cache_home() / "models" / f"testbed-{key}"


def warmup(cfg, log=print, force: bool = False):
    """Return ``(model, tokenizer)`` of the warm-started testbed model, training it if not cached.
    Two warm starts that differ only in ``model.warmup.seed`` share their initialisation and
    see the same data in another order (the members of a SALSA soup, ``reference: soup``)."""
    path = warm_model_dir(cfg)
    if path.exists() and not force:
        log(f"warmup: reusing {path}")
        return load_pretrained(path)
    # one warm-up per model at a time: a second process waits, then reuses what the first saved
    lock = FolderLock(path.parent, "warm start", name=f".{path.name}.lock")
    lock.on_wait = lambda: log(f"warmup: another process is warming up {path.name}; waiting for it")
    with lock.acquire(wait=True):
        if path.exists() and not force:
            log(f"warmup: reusing {path}")
            return load_pretrained(path)
        return _train_and_save(cfg, path, log)


def _train_and_save(cfg, path, log):
    tiny, warm = cfg.model.tiny, cfg.model.warmup
    model, tokenizer = build_tiny(tiny.family, testbed_alphabet(cfg), tiny.hidden_size, tiny.layers, tiny.heads,
                                  tiny.kv_heads, tiny.intermediate_size, tiny.max_positions, tiny.seed)
    tasks = TaskMix.from_config(warmup_tasks(cfg))
    prompt_format = for_config(cfg, tokenizer)
    rng = random.Random(data_seed(cfg))
    # its own stream, so sources with one reference draw the same problems as before it existed
    reference_rng = random.Random(f"references:{data_seed(cfg)}")
    repeats = warm.references_per_problem
    opt = torch.optim.AdamW(model.parameters(), lr=warm.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=warm.lr, total_steps=warm.steps, pct_start=0.1)
    model.train()
    start = time.time()
    for step in range(warm.steps):
        problems = [p for p in (tasks.sample(rng) for _ in range(warm.batch_size // repeats)) for _ in range(repeats)]
        ids, labels = _sft_batch(tokenizer, problems, tiny.max_positions, prompt_format, tasks, reference_rng)
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[:, :-1].flatten(0, 1),
                                                 labels[:, 1:].flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == warm.steps - 1:
            log(f"warmup step {step + 1}/{warm.steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(model, tokenizer, path)
    log(f"warmup: saved {path}")
    return load_pretrained(path)


def _sft_batch(tokenizer, problems, max_positions: int | None = None, prompt_format=None, tasks=None,
               reference_rng=None):
    """Right-padded prompt+answer+EOS sequences; labels only on the answer and EOS. A sequence
    longer than ``max_positions`` (the model's context) is cut there: a long answer is learnt up
    to the context (its end is past what the model can ever generate anyway). A ``prompt_format``
    other than raw (``prompt.template``) renders the prompt as the engine will. With ``tasks``
    (the mix), the answer is written as its source's verifier reads it
    (``reference_completion``: ``<answer>42</answer>`` for an ``answer_tags`` extractor); with
    ``reference_rng``, a reference drawn per row (``sample_reference``: a search trace in a fresh
    random order for ``countdown_search``), so a problem repeated in the batch gets several."""
    seqs, labels = [], []
    for p in problems:
        text = p.prompt if prompt_format is None or prompt_format.is_raw else prompt_format.render(p)
        prompt = tokenizer(text, add_special_tokens=False).input_ids
        source = None if tasks is None else tasks.sources[p.source]
        target = (p.answer if source is None else source.reference_completion(p) if reference_rng is None
                  else source.sample_reference(p, reference_rng))
        answer = tokenizer(target, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        seqs.append((prompt + answer)[:max_positions])
        labels.append(([-100] * len(prompt) + answer)[:max_positions])
    if all(x == -100 for lab in labels for x in lab):  # the loss would be NaN
        raise ValueError(f"warmup: no answer token of the batch fits the model's context of {max_positions} "
                         f"positions (model.tiny.max_positions): the prompts are longer than that")
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    lab = torch.full((len(seqs), width), -100)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        ids[i, :len(s)] = torch.tensor(s)
        lab[i, :len(l)] = torch.tensor(l)
    return ids, lab
