"""Multi-process training under torchrun: DDP or FSDP over NCCL (GPU) or gloo (CPU), one code path.

Without torchrun's environment (WORLD_SIZE unset or 1) every method is a no-op, so the training loop
reads the same either way. Each rank takes every world-th example of a global batch.

DDP replicates the model on every rank and all-reduces gradients. FSDP (`fsdp=True`, PyTorch's FSDP2
`fully_shard`) shards parameters, gradients and optimizer state across ranks, for models that do not fit
on one device: each transformer block is one shard unit (gathered just for its forward and backward), then
the rest of the model. State dicts are gathered in full on every rank (collectives) so saving and resuming
read the same as with DDP.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    fsdp: bool = False

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as td

        if not td.is_initialized():
            td.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        return cls(td.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def wrap(self, model: torch.nn.Module, fsdp: bool = False) -> torch.nn.Module:
        """DDP: a wrapper to call for training. FSDP: `model` itself, sharded in place."""
        if self.world == 1:
            return model
        if fsdp:
            from torch.distributed.fsdp import fully_shard

            self.fsdp = True
            for block in transformer_blocks(model):
                fully_shard(block)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if torch.cuda.is_available() else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: torch.nn.Module, skip: bool):
        """Skip the gradient reduction on the micro-batches before the last of an accumulation."""
        if self.world == 1:
            return contextlib.nullcontext()
        if self.fsdp:
            model.set_requires_gradient_sync(not skip)
            return contextlib.nullcontext()
        return model.no_sync() if skip else contextlib.nullcontext()

    def average_grads(self, params) -> None:
        """All-reduce (mean) the gradients of parameters that live outside the wrapped model."""
        if self.world == 1:
            return
        for param in params:
            if param.grad is not None:
                torch.distributed.all_reduce(param.grad)
                param.grad.div_(self.world)

    def model_state(self, model: torch.nn.Module) -> dict:
        """The full (unsharded) state dict; a collective under FSDP, so every rank calls it."""
        if not self.fsdp:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model.reshard()
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        if not self.fsdp:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def load_model_state(self, model: torch.nn.Module, state: dict) -> None:
        if not self.fsdp:
            model.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        model.reshard()  # the root unit stays gathered after a forward without backward (evaluation)
        set_model_state_dict(
            model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )

    def load_optimizer_state(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
    ) -> None:
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(
            model, optimizer, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )

    def gather_object(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank (a collective)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as td

        out: list = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated layers of a transformer: the members of its longest ModuleList (encoder.layer,
    model.layers)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []
