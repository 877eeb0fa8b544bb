"""Several processes: one strategy object places the student, reduces its gradients and gives its state.

The loop never asks which strategy it holds. A ``Strategy`` (``strategy_for(config, env)``):

- ``place(student, teacher)``: the same weights on every rank, then wrapping (ddp) or sharding (fsdp);
- ``micro_batch(last)``: the context one micro-batch's forward and backward run in (ddp skips the
  all-reduce with ``no_sync`` on every micro-batch but the step's last);
- ``reduce_gradients(extra)``: after the step's backward passes; the student's gradients are already
  reduced (DDP's buckets, FSDP's reduce-scatter), only the loss's own parameters (CTKD's
  temperature) are summed here;
- ``state_module()``: the module whose ``state_dict`` checkpoints hold (train/checkpoint.py saves it
  with torch.distributed.checkpoint, sharded as the parameters are), ``full_state()``: the whole
  student gathered for the saved ``student/`` folder, ``weights_digest()``: what the rank check compares.

``single`` (one process) does nothing of this. ``ddp`` (the default with several processes) is
torch's ``DistributedDataParallel``: gradients are bucketed and all-reduced while backward runs.
Its communication hook SUMS instead of averaging: each rank's loss is already divided by the
GLOBAL response-token count, so the sum is the gradient of the global mean, whatever module the
adapter calls inside the model. Unused parameters (a vision tower on a rank whose micro-batch
holds no image) are found on every step (``find_unused_parameters``); the chunked loss reads the
LM head outside the model's forward, so the forward module hands the head on as its output (a
view), which DDP then sees as used.

``fsdp`` shards parameters, gradients and AdamW state with FSDP2 (``fully_shard``): every decoder
layer and vision block is its own unit (gathered for its forward and backward, freed after), and
everything else (embeddings, final norm, LM head, projector) sits in the root unit, a
``ForwardPass`` module around the model. Reduce-scatter SUMS gradients (the divide factor is 1)
for the same reason as above. FSDP2 keeps the root unit gathered from the root's forward until its
backward, so the chunked loss reads the full head weight that the forward gathered, and its head
gradient flows into the root unit's reduce-scatter like any other: values and gradients are
exactly the unsharded run's.

A sharded teacher (``teacher_shard: true``) uses the same layout for inference only: no
gradients, no optimizer state; its layers are gathered one at a time and freed after their
forward, its root (embeddings and head) stays gathered.
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist

from ..models import ModelAdapter
from ..models.families import final_hidden_states
from ..models.lora import effective_head

LAYER_LISTS = ("layers", "blocks", "layer", "h")


class Distributed:
    """Which process this is, and the few collectives the loop needs; a no-op on one process."""

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

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on one (a collective when several processes run)."""
        if not self.active:
            return flag
        return bool(self.sum(torch.tensor([1.0 if flag else 0.0], device=self.device)).item() > 0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.active:
            return [value]
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, value)
        return everyone

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        if self.active:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)


class ForwardPass(torch.nn.Module):
    """The module a strategy wraps: its forward is the adapter's pass over the model.

    ``forward(inputs)`` gives (final hidden states, head weight, head bias): the chunked loss reads
    the head from here, so DDP sees it used and an FSDP root hands on the weight it gathered.
    ``forward(inputs, keep)`` gives the logits at positions ``keep`` (heads that scale or cap).
    """

    def __init__(self, adapter: ModelAdapter):
        super().__init__()
        self.model = adapter.model
        self.family = adapter.family_info

    def forward(self, inputs: dict[str, torch.Tensor], keep: torch.Tensor | None = None) -> Any:
        if keep is not None:
            return self.model(**inputs, use_cache=False, logits_to_keep=keep).logits
        hidden = final_hidden_states(self.model, inputs, self.family)
        weight, bias = effective_head(self.model.get_output_embeddings())  # W + scale * B @ A under LoRA
        return hidden, weight.view_as(weight), (bias.view_as(bias) if bias is not None else None)


class Trainable(torch.nn.Module):
    """What a checkpoint holds: the student (``model.``) and the loss's own modules (``loss.``)."""

    def __init__(self, model: torch.nn.Module, loss_modules: dict[str, torch.nn.Module]):
        super().__init__()
        self.model = model
        self.loss = torch.nn.ModuleDict(loss_modules)


# ---- strategies -----------------------------------------------------------------------------------


class Strategy:
    """One process: the model as it is. The base of the others (see the module docstring)."""

    name = "single"
    sharded = False  # whether the student's parameters are split over the ranks

    def __init__(self, env: Distributed):
        self.env = env
        self.student: ModelAdapter | None = None
        self._state_module: Trainable | None = None

    def place(self, student: ModelAdapter, teacher: ModelAdapter | None) -> None:
        self.student = student

    def micro_batch(self, last: bool) -> AbstractContextManager[Any]:
        return nullcontext()

    def reduce_gradients(self, extra: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of parameters outside the student (the loss's own) over ranks."""
        if not self.env.active:
            return
        for p in extra:
            if p.grad is None:
                p.grad = torch.zeros_like(p)  # every rank must contribute the same tensors
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def clip(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def state_module(self, loss_modules: dict[str, torch.nn.Module]) -> Trainable:
        if self._state_module is None:
            assert self.student is not None, "place() first"
            self._state_module = Trainable(self.student.model, loss_modules)
        return self._state_module

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """The whole student's weights for the saved folder; None: the model's own state (collective)."""
        return None

    def weights_digest(self, full_state: dict[str, torch.Tensor] | None) -> str | None:
        """What the ranks compare at the end: every replica digests its own weights."""
        assert self.student is not None
        return state_digest(self.student.model.state_dict())


class DDP(Strategy):
    """torch DistributedDataParallel: bucketed all-reduce overlapped with backward, no_sync while accumulating."""

    name = "ddp"

    def __init__(self, env: Distributed, bucket_cap_mb: float = 25.0):
        super().__init__(env)
        self.bucket_cap_mb = bucket_cap_mb
        self.wrapped: torch.nn.parallel.DistributedDataParallel | None = None

    def place(self, student: ModelAdapter, teacher: ModelAdapter | None) -> None:
        super().place(student, teacher)
        if not any(p.requires_grad for p in student.model.parameters()):
            raise ValueError("distributed=ddp: the student has no trainable parameters")
        device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        self.wrapped = torch.nn.parallel.DistributedDataParallel(
            ForwardPass(student), device_ids=device_ids, bucket_cap_mb=self.bucket_cap_mb,
            broadcast_buffers=False,  # the buffers (rotary tables) are the same everywhere; synced once at start
            find_unused_parameters=True, gradient_as_bucket_view=True,
        )
        self.wrapped.register_comm_hook(None, _sum_hook)
        student.forward_module = self.wrapped

    def micro_batch(self, last: bool) -> AbstractContextManager[Any]:
        assert self.wrapped is not None
        return nullcontext() if last else self.wrapped.no_sync()


def _sum_hook(group, bucket):  # noqa: ANN001 - DDP checks the annotations, and these would be strings here
    """DDP's all-reduce without its division by the world size (the loss is globally normalised)."""
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


class FSDP(Strategy):
    """FSDP2: parameters, gradients and optimizer state sharded; the student gathered only to save it."""

    name = "fsdp"
    sharded = True

    def __init__(self, env: Distributed, shard_teacher: bool = False):
        super().__init__(env)
        self.shard_teacher = shard_teacher

    def place(self, student: ModelAdapter, teacher: ModelAdapter | None) -> None:
        super().place(student, teacher)
        self.env.broadcast_parameters(student.model)  # rank 0's weights everywhere (DDP does this itself)
        shard(student, self.env)
        if self.shard_teacher and teacher is not None:
            shard(teacher, self.env)

    def full_state(self) -> dict[str, torch.Tensor] | None:
        assert self.student is not None
        return full_model_state(self.student.model)

    def weights_digest(self, full_state: dict[str, torch.Tensor] | None) -> str | None:
        """The student exists once, gathered on rank 0: its digest is rank 0's alone."""
        return state_digest(full_state) if self.env.is_main and full_state is not None else None


STRATEGIES = {"ddp": DDP, "fsdp": FSDP}


def strategy_for(config: Any, env: Distributed) -> Strategy:
    """``config.distributed`` with several processes; ``single`` on one, except that fsdp shards over a
    mesh of one when a launcher started the process (a single GPU runs the sharded code path)."""
    if config.distributed == "fsdp" and env.launched:
        return FSDP(env, shard_teacher=config.teacher_shard)
    if not env.active:
        return Strategy(env)
    return STRATEGIES[config.distributed](env)


def shard(adapter: ModelAdapter, env: Distributed) -> ForwardPass:
    """Shard ``adapter.model`` in place with FSDP2 and route its forward through the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if not adapter.head_is_linear:
        raise ValueError(
            f"distributed=fsdp needs a plain linear LM head (the chunked loss reads it); {adapter.family} "
            "scales or softcaps its logits: use distributed=ddp"
        )
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    for layer in layer_units(adapter.model):
        fully_shard(layer, mesh=mesh)
    root = ForwardPass(adapter)
    fully_shard(root, mesh=mesh)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # SUM: the loss is already globally normalised
            module.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum
    adapter.forward_module = root
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


# ---- whole states -----------------------------------------------------------------------------------


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole (sharded) student's state dict, gathered on the CPU of rank 0 (collective; {} elsewhere).

    Tied weights are kept once (the first name), as ``save_model`` does.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    for names in tied_groups(model):
        for extra in names[1:]:
            state.pop(extra, None)
    return state


def tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names that share one parameter (tied embeddings and head), each group in definition order."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def state_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def local_state_bytes(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
    """Bytes this rank holds for parameters, their gradients and the optimizer state (local shards)."""

    def nbytes(t: torch.Tensor) -> int:
        local = t.to_local() if hasattr(t, "to_local") else t
        return local.numel() * local.element_size()

    total = sum(nbytes(p) + (nbytes(p.grad) if p.grad is not None else 0) for p in params)
    for state in optimizer.state.values():
        total += sum(nbytes(v) for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    return total
