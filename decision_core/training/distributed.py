"""Data-parallel training under ``torchrun``: process group, episode sharding, gradient averaging.

``torchrun --nproc_per_node N decision-core train ...`` starts N copies of the same entry point; each reads the
torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``), joins a process group
(gloo on CPU, nccl when the process has a GPU), trains on its own shard of the episodes and averages gradients
with the others, so every process holds the same weights after every step. Only rank 0 talks to MLflow.

Agents own several networks and optimisers and run their own backward passes inside ``update``, so instead of
wrapping one module in ``DistributedDataParallel`` the same mechanism is attached to every trainable parameter:
rank 0's initial weights are broadcast, each gradient is all-reduced (asynchronously, while backward goes on) as
soon as it is accumulated, and every optimiser waits for the reductions and divides by the world size before
it steps. This is what DDP does, for any number of networks and optimisers per agent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from decision_core.errors import DecisionCoreError


class DistributedError(DecisionCoreError):
    """The distributed environment is incomplete or the process group cannot be joined."""


@dataclass
class DistContext:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env(timeout_s: float = 1800.0) -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (else a single-process context)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise DistributedError(
                f"WORLD_SIZE={world} but {var} is not set; start distributed training with torchrun "
                f"(torchrun --nproc_per_node N decision-core train ...)"
            )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() and os.environ.get("DECISION_CORE_DIST_BACKEND", "") != "gloo"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"cannot join the {backend} process group as rank {rank}: {exc}") from exc
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def shard_episodes(n_episodes: int, ctx: DistContext, seed: int) -> np.ndarray:
    """The episode numbers this process trains on: a seeded shuffle dealt round-robin (sizes differ by <= 1)."""
    if n_episodes < ctx.world_size:
        raise DistributedError(
            f"{n_episodes} episodes cannot be sharded over {ctx.world_size} processes; use fewer processes"
        )
    order = np.random.default_rng(seed).permutation(n_episodes)
    return np.sort(order[ctx.rank :: ctx.world_size])


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_agree(flag: bool, ctx: DistContext) -> bool:
    """Whether ``flag`` holds on every rank (e.g. "my loss is finite"), so all ranks stop together."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


@dataclass
class GradientAverager:
    """Averages every trainable parameter's gradient across ranks before each optimiser step (see module doc)."""

    ctx: DistContext
    _pending: list[Any] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)

    def attach(self, agent: Any) -> GradientAverager:
        params = [p for k, m in agent.nets.items() if not k.startswith("target") for p in m.parameters()]
        with torch.no_grad():
            for tensor in agent.nets.state_dict().values():  # weights and buffers, targets included
                dist.broadcast(tensor, src=0)
        for p in params:
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(self._reduce))
        for opt in agent.optimizers.values():
            self._handles.append(opt.register_step_pre_hook(self._wait))
        return self

    def _reduce(self, p: torch.Tensor) -> None:
        if p.grad is not None:
            self._pending.append((p.grad, dist.all_reduce(p.grad, async_op=True)))

    def _wait(self, *_: Any) -> None:
        for grad, work in self._pending:
            work.wait()
            grad.div_(self.ctx.world_size)
        self._pending.clear()

    def detach(self) -> None:
        # Outstanding reductions must finish before the process group goes away, or gloo aborts the process.
        for _grad, work in self._pending:
            work.wait()
        self._pending.clear()
        for h in self._handles:
            h.remove()
        self._handles.clear()


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (the training loop has already synchronised the ranks on its normal path)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
