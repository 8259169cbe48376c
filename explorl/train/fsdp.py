"""Sharded training (``train.parallel: fsdp``): PyTorch's FSDP2 (``fully_shard``) for policies
whose weights, gradients and optimizer state should not be held whole on every rank.

The layout is the colocated one RL trainers use with a separate inference engine: the
**training model** is sharded across the ranks — each decoder layer and the root are
``fully_shard``-ed, parameters and AdamW state kept in float32 shards (bfloat16/float16 compute
through FSDP's ``MixedPrecisionPolicy`` when ``model.dtype`` asks for it) — and every rank
keeps a whole **rollout copy** in ``model.dtype`` that samples, scores and serves the plug-ins
(as a vLLM engine would hold its own weights). After every update the full weights are
gathered from the shards into the rollout copy (``sync``). The training forward runs through
the model's own ``forward`` (the generic Hugging Face backend), where FSDP's hooks gather each
layer's weights and reduce-scatter its gradients.

Every training forward and backward is a collective, so the ranks run the same number of them
(``explorl.train.update`` pads a rank with fewer micro-batches with a part whose gradient is
zero). Gradients are summed over ranks, not averaged (``set_gradient_divide_factor(1)``): the
loss each rank back-propagates is already its share of the global, globally normalised loss.
Checkpoints hold the full float32 weights and the full optimizer state, gathered to rank 0, so
a run resumes on any number of ranks, and a checkpoint is an ordinary model folder.
"""
from __future__ import annotations

import copy

import torch


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks to shard one by one (``explorl.policy.model.decoder_layers``)."""
    from explorl.policy.model import decoder_layers as blocks
    layers = blocks(model)
    if not layers:
        raise ValueError(f"train.parallel: fsdp does not know how to shard {type(model).__name__} (no "
                         f"_no_split_modules); use train.parallel: ddp")
    return layers


class ShardedTraining:
    """The sharded training model made from ``policy`` (left whole, as the rollout copy)."""

    def __init__(self, policy, dtype: torch.dtype):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
        from explorl.policy.lora import is_lora
        if is_lora(policy):
            raise ValueError("train.parallel: fsdp with model.lora is not supported; LoRA adapters are small: "
                             "use train.parallel: ddp")
        model = copy.deepcopy(policy).float()
        # the mesh on the policy's device: left to itself, fully_shard builds it on any visible
        # accelerator, so CPU ranks (gloo, model.device: cpu) on a GPU machine would all land on one GPU
        mesh = init_device_mesh(next(policy.parameters()).device.type, (dist.get_world_size(),))
        mixed = (MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
                 if dtype != torch.float32 else MixedPrecisionPolicy())
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=mixed)
        fully_shard(model, mesh=mesh, mp_policy=mixed)
        self.modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for module in self.modules:
            module.set_gradient_divide_factor(1.0)  # a sum: each rank's loss is its share of the whole
            module.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no pre-scaled sum)
        self.model = model

    def full_weights(self, cpu: bool = False) -> dict[str, torch.Tensor]:
        """Every weight, whole, on every rank (a collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=cpu))

    @torch.no_grad()
    def sync(self, rollout_model) -> None:
        """Copy the trained weights into the rollout copy (a collective)."""
        weights = self.full_weights()
        own = rollout_model.state_dict()
        for name, value in weights.items():
            if name in own:
                own[name].copy_(value.to(own[name].dtype))

    def checkpoint_weights(self, rollout_model) -> dict[str, torch.Tensor]:
        """The full weights as ``save_pretrained`` writes them: one entry per tensor, tied
        aliases (an output layer tied to the embeddings) left out as the rollout copy has them."""
        weights = self.full_weights(cpu=True)
        seen, aliases = set(), set()
        for name, tensor in rollout_model.state_dict().items():
            key = (tensor.data_ptr(), tensor.shape)
            if key in seen:
                aliases.add(name)
            seen.add(key)
        return {name: value for name, value in weights.items() if name not in aliases}

    def load_full_weights(self, weights: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        set_model_state_dict(self.model, weights, options=StateDictOptions(full_state_dict=True))

    def optimizer_state(self, optimizer) -> dict:
        """The optimizer's whole state, keyed by parameter names (a collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(self.model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(self.model, optimizer, state, options=StateDictOptions(full_state_dict=True))
