"""Several processes: the collectives the loop needs, and FSDP2 sharding of the student (and teacher).

``distributed: ddp`` (the default) keeps a whole student on every rank and sums gradients once
per optimizer step (``Distributed.sum_gradients``): each rank's loss is already divided by the
GLOBAL response-token count, so the sum is the gradient of the global mean, whatever module the
adapter calls inside the model.

``distributed: fsdp`` shards parameters, gradients and AdamW state with FSDP2 (``fully_shard``):
every decoder layer and vision block is its own unit (gathered for its forward and backward,
freed after), and everything else (embeddings, final norm, LM head, projector) sits in the root
unit, a ``HiddenStates`` module around the model whose forward is the adapter's
hidden-state pass. Reduce-scatter SUMS gradients (the divide factor is 1) for the same reason
as above.

The sharded LM head and the chunked loss: FSDP2 keeps the root unit gathered from the root's
forward until its backward (it is never resharded in between), so the chunked loss reads the
full head weight that the forward gathered, and its head gradient flows into the root unit's
reduce-scatter like any other. Values and gradients are therefore exactly the unsharded
run's; no per-shard loss and no second gather.

A sharded teacher (``teacher_shard: true``) uses the same layout for inference only: no
gradients, no optimizer state; its layers are gathered one at a time and freed after their
forward, its root (embeddings and head) stays gathered.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..models import ModelAdapter
from ..models.families import final_hidden_states

LAYER_LISTS = ("layers", "blocks", "layer", "h")


class Distributed:
    """The few collectives the loop needs; a no-op on one process."""

    def __init__(self) -> None:
        from accelerate import PartialState

        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank = self.state.process_index
        self.world_size = self.state.num_processes
        self.device = self.state.device
        self.is_main = self.state.is_main_process

    @property
    def active(self) -> bool:
        return self.world_size > 1 and self.launched

    @property
    def launched(self) -> bool:
        """Started by a launcher (torchrun, accelerate launch): a process group exists, maybe of one rank."""
        return dist.is_available() and dist.is_initialized()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.active:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        if self.active:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def sum_gradients(self, params: list[torch.nn.Parameter], bucket_elements: int = 1 << 25) -> None:
        """Sum gradients over ranks, a bucket of flattened gradients at a time (one all-reduce per
        bucket of at most 128 MB in fp32, not one per tensor, and never a copy of all of them)."""
        if not self.active:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)  # every rank must contribute the same tensors
        bucket: list[torch.Tensor] = []
        size = 0
        for grad in [p.grad for p in params]:
            if bucket and (size + grad.numel() > bucket_elements or grad.dtype != bucket[0].dtype):
                _all_reduce_bucket(bucket)
                bucket, size = [], 0
            bucket.append(grad)
            size += grad.numel()
        if bucket:
            _all_reduce_bucket(bucket)


def _all_reduce_bucket(grads: list[torch.Tensor]) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class HiddenStates(torch.nn.Module):
    """The FSDP root: its forward is the adapter's final-hidden-state pass, so calling it gathers
    the root unit (embeddings, head, ...) and runs every sharded layer's hooks."""

    def __init__(self, adapter: ModelAdapter):
        super().__init__()
        self.model = adapter.model
        self.family = adapter.family_info

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return final_hidden_states(self.model, inputs, self.family)


def shard(adapter: ModelAdapter, env: Distributed) -> HiddenStates:
    """Shard ``adapter.model`` in place with FSDP2 and route its hidden-state pass through the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if not adapter.head_is_linear:
        raise ValueError(
            f"distributed=fsdp needs a plain linear LM head (the chunked loss reads it); {adapter.family} "
            "scales or caps its logits: use distributed=ddp"
        )
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    for layer in layer_units(adapter.model):
        fully_shard(layer, mesh=mesh)
    root = HiddenStates(adapter)
    fully_shard(root, mesh=mesh)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # SUM: the loss is already globally normalised
            module.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum
    adapter.hidden_module = root
    return root


def layer_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Each repeated block (decoder layers, vision blocks): the units FSDP gathers one at a time."""
    units = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)) and name.split(".")[-1] in LAYER_LISTS:
            units += [m for m in module if any(True for _ in m.parameters())]
    if not units:
        raise ValueError(f"{type(model).__name__}: found no layer list ({', '.join(LAYER_LISTS)}) to shard with FSDP")
    return units


# ---- full (unsharded) state for checkpoints and the saved student ---------------------------------


def full_model_state(root: HiddenStates) -> dict[str, torch.Tensor]:
    """The whole student's state dict, gathered on the CPU of rank 0 (collective; {} elsewhere).

    Names are the model's own (without the root's ``model.`` prefix), so the checkpoint is the
    same file a ddp run writes; tied weights are kept once (the first name), as ``save_model``
    does, and restored on load.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    state = {k.removeprefix("model."): v for k, v in state.items()}
    for names in tied_groups(root.model):
        for extra in names[1:]:
            state.pop(extra, None)
    return state


def full_optimizer_state(root: HiddenStates, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(root, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(root: HiddenStates, optimizer: torch.optim.Optimizer, model_state: dict[str, torch.Tensor],
                    optimizer_state: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Scatter a full checkpoint into the shards (collective); returns (missing, unexpected) names."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    state = dict(model_state)
    for names in tied_groups(root.model):
        if names[0] in state:
            state.update({extra: state[names[0]] for extra in names[1:]})
    expected = set(k.removeprefix("model.") for k in root.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        return missing, unexpected
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(root, {f"model.{k}": v for k, v in state.items()}, options=options)
    set_optimizer_state_dict(root, optimizer, optim_state_dict=optimizer_state, options=options)
    return [], []


def tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names that share one parameter (tied embeddings and head), each group in definition order."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def local_state_bytes(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
    """Bytes this rank holds for parameters, their gradients and the optimizer state (local shards)."""

    def nbytes(t: torch.Tensor) -> int:
        local = t.to_local() if hasattr(t, "to_local") else t
        return local.numel() * local.element_size()

    total = sum(nbytes(p) + (nbytes(p.grad) if p.grad is not None else 0) for p in params)
    for state in optimizer.state.values():
        total += sum(nbytes(v) for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    return total
