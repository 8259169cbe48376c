"""``cot2_csft``: CoT2's continuous supervision (CSFT), the warm start of continuous thoughts.

"Continuous Chain of Thought Enables Parallel Exploration and Reasoning", arXiv:2505.23648;
code github.com/alperengozeten/CoT2 @ 11932cb, ``train/continuous_train.py``. Before the
first RL step, ``steps`` supervised steps teach the policy to think in ``think_tokens`` soft
steps. At thinking step t the softmax of the logits z_t is matched to p*_t, the empirical
token distribution of a set of target traces at that step (lines 245-254):

    ℓ_t = −Σ_v p*_t[v] log softmax(z_t)[v] + Σ_v p*_t[v] log(p*_t[v] + 1e-8)  (= KL(p*_t ‖ softmax z_t))

and the answer after the thought gets cross-entropy (``"h"`` in ``loss_steps``; the script
passes steps 0..L−2 and h, all of them here). The input fed at thinking step t is p*_t^T E,
the target mixture (``"hard_teacher"``, the script's choice, lines 327-329); the
"soft_teacher" variant feeds the model's own softmax and needs the steps one after another,
so it is left out. Per row the loss is Σ_t ℓ_t + Σ (answer tokens' −log π), averaged over the
batch (the code's ``batch_loss``, line 446).

Target traces come from the task source: MNNS gives the 2^L sign paths' partial sums
(``MNNS.thought_traces``, the code's "uniform" strategy); countdown (our extension, the
paper has no countdown) gives up to ``countdown_traces`` solutions found by the procedural
solver, each padded with spaces to ``think_tokens`` characters, so the thought superposes
candidate expressions and the answer writes the reference one. Every trace must be exactly
``think_tokens`` tokens.

Choices: the steps use an optimiser of their own, AdamW at ``lr`` (the code: AdamW 1e-4 for
1000 epochs from scratch; here the warm-started testbed model is the start, and the RL
learning rate stays the recipe's), gradient norm clipped at 1 (the testbed warm-up's), over
``problems_per_step`` problems the curriculum draws. A non-finite loss stops the run.
"""
from __future__ import annotations

import torch

from explorl.batch import DEMO, RolloutBatch
from explorl.explore.base import Guidance
from explorl.policy.soft import UNSCORED, SoftInputs
from explorl.registry import register

EPS = 1e-8  # the code's EPS in cross_entropy_distribution


def csft_kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The code's ``cross_entropy_distribution_batch``: KL(target ‖ softmax(logits)) per row."""
    logp = torch.log_softmax(logits.float(), -1)
    return -(target * logp).sum(-1) + (target * torch.log(target + EPS)).sum(-1)


def thought_targets(problem, think_tokens: int, countdown_traces: int = 8):
    """``([(trace, weight)], answer completion)`` for a problem of a source with target traces."""
    from explorl.tasks import SOURCES
    from explorl.tasks.countdown import Countdown, countdown_solutions, parse_prompt
    cls = SOURCES.get(problem.source)
    if cls is not None and hasattr(cls, "thought_traces"):
        source = cls()
        return source.thought_traces(problem), source.answer_completion(problem)
    if cls is Countdown:
        numbers, target = parse_prompt(problem.prompt)
        found = countdown_solutions(numbers, target, "ascending", countdown_traces) or [problem.answer]
        traces = [s[:think_tokens].ljust(think_tokens) for s in found]
        return [(t, 1.0 / len(traces)) for t in traces], problem.answer
    raise ValueError(f"guidance cot2_csft: task source {problem.source!r} has no target traces (sources with "
                     f"them: mnns, countdown)")


def csft_batch(engine, problems, think_tokens: int, countdown_traces: int = 8):
    """Demonstration rows: ``think_tokens`` soft positions fed their target mixture p*_t, then the
    answer completion and the end token; and the targets ``(R, think_tokens, V)``."""
    tok, V = engine.tokenizer, engine.model.get_input_embeddings().num_embeddings
    targets, rows = [], []
    for p in problems:
        traces, answer = thought_targets(p, think_tokens, countdown_traces)
        dist = torch.zeros(think_tokens, V)
        for text, weight in traces:
            ids = tok(text, add_special_tokens=False).input_ids
            if len(ids) != think_tokens:
                raise ValueError(f"guidance cot2_csft: problem {p.id}: the trace {text!r} is {len(ids)} tokens, "
                                 f"the thought is think_tokens={think_tokens}")
            dist[torch.arange(think_tokens), torch.tensor(ids)] += weight
        dist = dist / dist.sum(-1, keepdim=True)
        targets.append(dist)
        rows.append(dist.argmax(-1).tolist() + tok(answer, add_special_tokens=False).input_ids
                    + [engine.response_end_id])
    R, Lc = len(rows), max(map(len, rows))
    ids = torch.full((R, Lc), engine.pad, dtype=torch.long)
    mask = torch.zeros(R, Lc)
    for r, row in enumerate(rows):
        ids[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1.0
    fed = torch.zeros(R, Lc, dtype=torch.bool)
    fed[:, :think_tokens] = True
    weights = torch.zeros(R, Lc, V)
    weights[:, :think_tokens] = torch.stack(targets)
    rule = torch.zeros(R, Lc, dtype=torch.int8).masked_fill(fed, UNSCORED)
    prompt_ids, prompt_mask = engine.encode_prompts(problems)
    zeros = torch.zeros(R, Lc)
    batch = RolloutBatch(problems=list(problems), counts=[1] * R, group=torch.arange(R), prompt_ids=prompt_ids.cpu(),
                         prompt_mask=prompt_mask.cpu(), response_ids=ids, mask=mask, behaviour_logp=zeros,
                         old_logp=zeros, entropy=zeros, texts=[""] * R, kind=torch.full((R,), DEMO),
                         soft=SoftInputs(fed, rule, weights))
    return batch, torch.stack(targets)


def csft_loss(logits: torch.Tensor, batch: RolloutBatch, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Σ_t KL(p*_t ‖ softmax z_t) over the thought + the answer tokens' cross-entropy, per row,
    averaged over the rows."""
    T = targets.shape[1]
    kl = csft_kl(logits[:, :T], targets.to(logits.device)).sum(-1)
    answer_logp = torch.log_softmax(logits[:, T:].float(), -1).gather(
        -1, batch.response_ids[:, T:, None].to(logits.device)).squeeze(-1)
    ce = -(answer_logp * batch.mask[:, T:].to(logits.device)).sum(-1)
    return (kl + ce).mean(), {"kl": float(kl.detach().mean()), "answer_ce": float(ce.detach().mean())}


@register("guidance", "cot2_csft", paper="CoT2 continuous supervision (CSFT), arXiv:2505.23648")
class CoT2CSFT(Guidance):
    def __init__(self, think_tokens: int = 3, steps: int = 200, lr: float = 1e-3, countdown_traces: int = 8):
        if think_tokens < 1 or steps < 1 or lr <= 0 or countdown_traces < 1:
            raise ValueError("guidance cot2_csft: need think_tokens >= 1, steps >= 1, lr > 0, countdown_traces >= 1")
        self.think_tokens, self.steps, self.lr, self.countdown_traces = think_tokens, steps, lr, countdown_traces

    def before_training(self, ctx) -> dict:
        engine = ctx.engine
        model = engine.model
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr)
        was_training = model.training
        model.train()
        first = last = None
        for step in range(self.steps):
            batch, targets = csft_batch(engine, ctx.draw(ctx.problems_per_step), self.think_tokens,
                                        self.countdown_traces)
            loss, parts = csft_loss(engine.response_logits(batch), batch, targets)
            if not torch.isfinite(loss):
                raise ValueError(f"guidance cot2_csft: step {step + 1}: the loss is not finite ({loss.item()}); "
                                 f"lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            first = first or parts
            last = parts
        model.train(was_training)
        engine.weights_updated()
        return {"guide/csft_steps": float(self.steps), "guide/csft_kl_first": first["kl"],
                "guide/csft_kl_last": last["kl"], "guide/csft_answer_ce_first": first["answer_ce"],
                "guide/csft_answer_ce_last": last["answer_ce"]}
