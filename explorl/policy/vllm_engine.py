"""Rollouts through vLLM (``model.backend: vllm``; the optional extra ``explorl[vllm]``, Linux with CUDA).

Colocated, as TRL's ``vllm_mode="colocate"``: every process holds its own vLLM engine on its GPU
beside the training model, in the same process (``distributed_executor_backend="external_launcher"``,
tensor parallel 1), so under ``torchrun`` each rank samples its share of a step's groups with its
own engine. ``model.vllm.enable_sleep_mode`` frees vLLM's weights and KV cache between rollouts
(sleep level 2) so the update has the memory; the weights are pushed again before the next one.

A step's rollouts:

* one vLLM request per problem with ``n`` = that problem's rollout count (a budget's variable
  counts map one to one), ``stop_token_ids`` = the engine's stop ids (EOS, the chat template's end
  of turn, the model's EOS ids), token ids in and out (no vLLM tokenizer: ``skip_tokenizer_init``);
* a constant temperature is vLLM's own; a temperature that varies with the position (EAD, any
  ``decoding`` schedule) goes to the ``PositionTemperature`` logits processor
  (``explorl.policy.vllm_logits``) in the request's ``extra_args``, at vLLM temperature 1;
* ``behaviour_logp`` is vLLM's log-prob of each sampled token under the distribution it was
  drawn from (``logprobs_mode="processed_logprobs"``: after temperature and top-p);
* ``old_logp`` and ``entropy`` come from a forward pass of the training model over the same
  tokens (``RolloutEngine.score_responses``), so π_old is the trainer's own and ``ppo_clip``'s
  ``tis_cap`` corrects the sampler/trainer mismatch (π_old / π_behaviour) as in the papers;
* after each optimizer step the loop calls ``weights_updated``; the new weights are pushed
  into vLLM (``load_weights``, LoRA adapters merged first) before the next rollout.

Seeds: each request carries its own seed, from the call's ``seed`` and the group's index, or,
under data parallelism, from the group's rows of the rank-invariant ``noise``, so a group gets
the same seed whichever rank samples it. vLLM's numerics depend on the batch it runs, so a
2-process vLLM run is not bit-equal to a 1-process one (the built-in engine's is).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from functools import partial

import torch

from explorl.batch import ON_POLICY, RolloutBatch
from explorl.policy.engine import RolloutEngine, check_counts, group_parts

#: the ``SamplingParams.extra_args`` key the position-temperature processor reads
TEMPERATURES_KEY = "explorl_temperatures"
PROCESSOR = "explorl.policy.vllm_logits:PositionTemperature"


def scale_by_position(temperatures: list[float], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
    """A request's next-token logits divided by the temperature of the position it samples
    (the number of tokens generated so far; the last temperature past the schedule's end)."""
    t = min(len(output_ids), len(temperatures) - 1)
    return logits / temperatures[t]


def vllm_weights(model):
    """``(name, tensor)`` for every weight of ``model`` under the name a ``transformers``
    checkpoint gives it (what vLLM's ``load_weights`` reads). Under a peft LoRA wrapper the
    adapters are merged into the base weights for the duration of the iteration, and the names
    are the base model's (peft's prefixes and the adapters' own tensors left out). A tensor
    holds the merged value only while it is yielded: copy it then."""
    from explorl.policy.lora import is_lora
    if not is_lora(model):
        for name, param in model.named_parameters():
            yield name, param.data
        return
    model.merge_adapter()
    try:
        prefix = model.prefix  # "lora_": the adapters' own tensors
        for name, param in model.named_parameters():
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            if prefix in name or "original_module" in name:
                continue
            yield name.replace("modules_to_save.default.", ""), param.data
    finally:
        model.unmerge_adapter()


def group_seeds(seed: int, counts: list[int], noise: torch.Tensor | None) -> list[int]:
    """One vLLM seed per group: from ``seed`` and the group's index, or, given the rows'
    ``noise`` (uniforms a data-parallel step draws for the whole batch), from the group's first
    row, so a group's seed does not depend on which rank samples it."""
    if noise is None:
        return [(seed * 1_000_003 + g) % 2**31 for g in range(len(counts))]
    firsts, row = [], 0
    for c in counts:
        firsts.append(row)
        row += c
    return [int(noise[r, 0].item() * 2**31) % 2**31 for r in firsts]


class VLLMEngine(RolloutEngine):
    """A rollout engine that samples with vLLM and scores with the training model.

    ``llm`` and ``sampling_params`` stand in for ``vllm.LLM`` and ``vllm.SamplingParams`` (tests
    pass their own); by default the engine starts vLLM on a copy of ``model`` saved to a
    temporary folder, which it removes on ``close``.
    """

    soft_tokens = False  # vLLM samples whole token sequences: no soft tokens
    supports_interventions = False

    def __init__(self, model, tokenizer, prompt_format=None, options=None, llm=None, sampling_params=None):
        super().__init__(model, tokenizer, "auto", prompt_format)  # the training-side forward
        self.options = options
        self._folder = None
        self.sleep = bool(options and options.enable_sleep_mode)
        self.asleep = False  # vLLM's weights and KV cache freed (sleep level 2)
        self.stale = True  # vLLM holds the weights it was started with; a resume may have loaded others
        if llm is None:
            llm, sampling_params = self._start(options)
        self.llm, self.sampling_params = llm, sampling_params

    def _start(self, options):
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise ValueError("model.backend: vllm needs the vLLM package (pip install -e .[vllm], on Linux "
                             "with a CUDA GPU)") from None
        from explorl.policy.model import unwrap
        from explorl.policy.device import free_port
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        self._folder = tempfile.mkdtemp(prefix="explorl-vllm-")
        unwrap(self.model).save_pretrained(self._folder)  # the base weights; LoRA's merged ones are pushed
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        llm = LLM(model=self._folder, skip_tokenizer_init=True, dtype=dtype, seed=int(os.environ["RANK"]),
                  gpu_memory_utilization=options.gpu_memory_utilization, max_model_len=options.max_model_len,
                  enable_sleep_mode=self.sleep, distributed_executor_backend="external_launcher",
                  tensor_parallel_size=1, logprobs_mode="processed_logprobs", logits_processors=[PROCESSOR])
        if self.sleep:
            llm.sleep(level=2)
            self.asleep = True
        return llm, SamplingParams

    def weights_updated(self) -> None:
        self.stale = True

    def _push_weights(self) -> None:
        if self.asleep:
            torch.cuda.empty_cache()  # what the update freed, for vLLM's weights
            self.llm.wake_up(tags=["weights"])
        model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, tensor in vllm_weights(self.model):
            model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()
        self.stale = False

    def requests(self, problems, counts, temperatures, top_p, seed, max_new_tokens, noise=None):
        """The vLLM prompts and one ``SamplingParams`` per problem."""
        max_new = max_new_tokens or len(temperatures)
        temps = [float(t) for t in temperatures[:max_new]]
        constant = all(t == temps[0] for t in temps)
        stop = [int(i) for i in self.stop_ids.tolist()]
        prompts = [{"prompt_token_ids": ids} for ids in self._prompt_token_ids(problems)]
        params = [self.sampling_params(n=c, temperature=temps[0] if constant else 1.0, top_p=top_p,
                                       max_tokens=max_new, logprobs=0, stop_token_ids=stop, seed=s,
                                       detokenize=False,
                                       extra_args=None if constant else {TEMPERATURES_KEY: temps})
                  for c, s in zip(counts, group_seeds(seed, counts, noise))]
        return prompts, params

    def _prompt_token_ids(self, problems):
        return [self.tokenizer(t, add_special_tokens=False).input_ids for t in self.prompt_texts(problems)]

    @torch.no_grad()
    def rollout(self, problems, counts, temperatures, top_p: float = 1.0, seed: int = 0,
                max_new_tokens: int | None = None, noise: torch.Tensor | None = None,
                max_rows: int | None = None, intervention=None) -> RolloutBatch:
        """As ``RolloutEngine.rollout``; ``max_rows`` bounds the rows of each training forward
        that scores the responses (vLLM schedules its own decoding batches). vLLM's forward
        cannot take an activation intervention: one is an error."""
        if intervention is not None:
            raise ValueError("model.backend: vllm cannot apply an activation intervention (the decoding method "
                             "steers the residual stream while sampling); use model.backend: auto, fast or hf")
        check_counts(problems, counts)
        if self.stale:
            self._push_weights()
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        prompts, params = self.requests(problems, counts, temperatures, top_p, seed, max_new_tokens, noise)
        try:
            outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        finally:
            if self.sleep:
                self.llm.sleep(level=2)  # frees the weights too: they are pushed again before the next rollout
                self.asleep, self.stale = True, True
        token_ids, behaviour = self._responses(outputs, counts)
        return self._score_in_parts(problems, counts, token_ids, behaviour, max_rows)

    def _responses(self, outputs, counts):
        stop = set(self.stop_ids.tolist())
        token_ids, behaviour = [], []
        for g, (request, count) in enumerate(zip(outputs, counts)):
            if len(request.outputs) != count:
                raise RuntimeError(f"vLLM returned {len(request.outputs)} responses for problem {g}, asked for {count}")
            for out in request.outputs:
                ids = list(out.token_ids)
                if not ids or out.logprobs is None:
                    raise RuntimeError(f"vLLM returned a response without tokens or log-probs for problem {g}")
                if out.finish_reason == "stop" and ids[-1] not in stop:
                    raise RuntimeError(f"vLLM stopped a response of problem {g} without its stop token "
                                       f"(finish_reason {out.finish_reason!r}, last token {ids[-1]}): the "
                                       f"policy would never be trained to end its answers")
                token_ids.append(ids)
                behaviour.append([step[tok].logprob for tok, step in zip(ids, out.logprobs)])
        return token_ids, behaviour

    def _score_in_parts(self, problems, counts, token_ids, behaviour, max_rows):
        batches, row = [], 0
        for groups, rows in group_parts(counts, max_rows or sum(counts)):
            batches.append(self.score_responses([problems[g] for g in groups], [counts[g] for g in groups],
                                                token_ids=token_ids[row:row + rows],
                                                behaviour_logp=behaviour[row:row + rows], kind=ON_POLICY))
            row += rows
        return batches[0] if len(batches) == 1 else RolloutBatch.concat(batches, self.pad)

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def make_position_processor(params) -> partial | None:
    """The per-request processor ``PositionTemperature`` applies, or None where the request
    samples at one temperature."""
    temps = (getattr(params, "extra_args", None) or {}).get(TEMPERATURES_KEY)
    return None if temps is None else partial(scale_by_position, [float(t) for t in temps])
