"""vLLM's side of a temperature that varies with the position (imported by vLLM, by name, where
``model.backend: vllm`` starts it; needs vLLM's V1 logits-processor interface, vLLM 0.22-0.31).

A request whose ``SamplingParams.extra_args`` carries the schedule (``explorl_temperatures``) is
sampled at vLLM temperature 1 with its logits divided by the schedule's temperature at the
position being sampled (``explorl.policy.vllm_engine.scale_by_position``); top-p and the
processed log-probs then see the scaled distribution, as the built-in engine's sampler does.
"""
from __future__ import annotations

from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from explorl.policy.vllm_engine import make_position_processor


class PositionTemperature(AdapterLogitsProcessor):
    def is_argmax_invariant(self) -> bool:
        return False  # applied before vLLM's own temperature (1 for these requests) and top-p

    def new_req_logits_processor(self, params):
        return make_position_processor(params)
