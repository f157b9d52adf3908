"""Multi-process training under ``torchrun``: the process group, the global batch, the loss over all ranks.

    torchrun --nproc-per-node=4 -m eatlib.cli train --arch resnet --out runs/resnet/standard

One process per device (rank). What this module decides, and why:

- ``train.batch_size`` is the GLOBAL batch. Every rank draws the same class-balanced batches (same sampler, same
  ``(seed, epoch)``) and takes a contiguous ``batch_size / world_size`` share of each (:func:`shard`); with that
  share a multiple of ``samples_per_class``, each rank holds whole classes. A step thus sees exactly the images of
  the single-process step, and a run can resume with another number of processes.
- The loss is over the global batch: Proxy-Anchor is not a mean of per-sample terms (its log-sum-exp couples
  every sample of the batch with every proxy), so averaging per-rank losses is a different objective. A forward
  pre-hook on the criterion (:func:`gather_loss_inputs`) all-gathers embeddings (with gradients) and labels from
  every rank, so each rank computes the single-process loss. Its backward sums the embedding gradients over the
  ranks (``world_size`` x the true gradient), which DistributedDataParallel's gradient averaging divides back:
  the synchronised gradients are those of the single-process step.
- Gradients of the model AND of the criterion (the proxies are its parameters) are averaged by one
  ``DistributedDataParallel`` around :class:`StepModule`, which runs the whole defense step (inner attacks
  included) inside DDP's forward.
- BatchNorm normalises with per-rank statistics unless :func:`convert_sync_batchnorm` is used (``sync_bn``);
  torch's SyncBatchNorm runs on CUDA only.
- In one process, the members of an ensemble can live on different devices (:func:`place_members`): a model too
  large for one GPU, without DDP.

Only rank 0 writes checkpoints, logs and progress bars (:attr:`World.is_main`).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import _functional_collectives as collectives

from eatlib.params import ConfigError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def world() -> World:
    """The initialised process group's view of this process; a single process when there is none."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def init_from_env(device: str = "auto", timeout_minutes: float = 30.0) -> World:
    """Join the process group that ``torchrun`` describes in its environment variables (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a no-op returning a single-process :class:`World` outside torchrun.

    ``device`` is params.yaml's ``device``: backend ``nccl`` when training on CUDA (each rank pinned to
    ``cuda:LOCAL_RANK``), ``gloo`` on CPU. An explicit ``cuda:N`` is refused: each rank picks its own GPU.
    """
    if not launched_by_torchrun():
        return World()
    if dist.is_initialized():
        return world()
    if device.startswith("cuda:"):
        raise ConfigError(
            f"device: got {device!r} under torchrun; allowed: 'auto', 'cuda' or 'cpu' (rank r uses cuda:LOCAL_RANK)"
        )
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU (torchrun --nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)  # torch.device("cuda") now means this rank's GPU
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
    return world()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch_size: int, current: World) -> slice:
    """This rank's positions in a global batch of ``batch_size``: a contiguous ``batch_size / world_size``."""
    if batch_size % current.world_size:
        raise ConfigError(
            f"train.batch_size: got {batch_size}; allowed: a multiple of the number of processes "
            f"({current.world_size}): batch_size is the global batch, split evenly over the ranks"
        )
    size = batch_size // current.world_size
    return slice(current.rank * size, (current.rank + 1) * size)


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor [n_r, ...]`` of every rank along dim 0, in rank order, keeping gradients (the
    backward sums each rank's slice of the gradient over the ranks). Ranks may hold different ``n_r``."""
    group = dist.group.WORLD
    sizes = collectives.all_gather_single(torch.tensor([len(tensor)], device=tensor.device), 0, group)
    sizes = [int(n) for n in sizes.tolist()]
    longest = max(sizes)
    if longest > len(tensor):  # the collective needs equal shapes: pad, gather, cut the padding out
        padding = tensor.new_zeros((longest - len(tensor), *tensor.shape[1:]))
        tensor = torch.cat([tensor, padding])
    gathered = collectives.all_gather_single(tensor.contiguous(), 0, group)
    if all(n == longest for n in sizes):
        return gathered
    return torch.cat([gathered[r * longest : r * longest + n] for r, n in enumerate(sizes)])


def _gather_embeddings_and_labels(module: nn.Module, args: tuple) -> tuple:
    if len(args) < 2:
        raise TypeError(
            f"{type(module).__name__} is called with {len(args)} positional argument(s); the global-batch loss "
            "needs criterion(embeddings, labels) positionally (or fit(..., global_loss=False))"
        )
    embeddings, labels, *rest = args
    return (all_gather(embeddings), all_gather(labels), *rest)


def gather_loss_inputs(criterion: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """From now on ``criterion(embeddings, labels)`` computes the loss of the global batch on every rank.

    Every rank must call the criterion equally often (a collective inside a call only some ranks make would
    wait forever): true for steps whose calls do not depend on the data (standard, pgd_at, trades, iat; their
    inner attacks run a fixed number of steps). Returns the hook's handle; ``handle.remove()`` restores it.
    """
    return criterion.register_forward_pre_hook(_gather_embeddings_and_labels)


class StepModule(nn.Module):
    """A defense's step with the model and the criterion as one module: ``forward(images, labels, indices) ->
    loss``. Wrapped in DistributedDataParallel it averages the gradients of the model and of the criterion's
    proxies, and the whole step, inner attacks included, runs inside DDP's forward."""

    def __init__(self, model: nn.Module, criterion: nn.Module, step: Callable, make_batch: Callable):
        super().__init__()
        self.model, self.criterion = model, criterion
        self.step, self.make_batch = step, make_batch

    def forward(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.step(self.model, self.criterion, self.make_batch(images, labels, indices))


def data_parallel(module: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel (its parameters and buffers broadcast from rank 0 now)."""
    device = next(module.parameters()).device
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids,
                                               find_unused_parameters=find_unused_parameters)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm of ``model`` (in place) normalises with the statistics of the global batch (torch's
    SyncBatchNorm; same state-dict keys, so checkpoints stay interchangeable). CUDA only.

    Each training-mode BatchNorm forward is a collective: every rank must run each network equally often. An
    ensemble whose split leaves a member without samples in some rank's share (``disjoint`` or ``bootstrap``
    with a few images per rank) would wait forever; keep per-rank statistics there."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ConfigError(
            f"sync_bn: got True on {device}; allowed: only on CUDA (torch's SyncBatchNorm). On CPU set "
            "train.freeze_bn: true for the single-process statistics, or keep per-rank statistics"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def all_true(flag: bool, device: torch.device) -> bool:
    """``flag`` holds on every rank (e.g. the loss is finite everywhere), so all ranks stop together."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() == 1.0)


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_from_main(obj):
    """Rank 0's ``obj`` on every rank (plain data, e.g. the history)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def place_members(ensemble: nn.Module, devices: Sequence[str | torch.device], home: torch.device) -> None:
    """Move member ``m`` of ``ensemble`` (an :class:`eatlib.models.Ensemble`) to ``devices[m]``, in place.

    Each member then takes its input to its own device and hands its embedding back on ``home`` (where the
    images, the losses and the aggregation live), through forward hooks that autograd differentiates like any
    copy; callers (the trainer, attacks, :func:`eatlib.evaluate.embed`) see one model on ``home``. The state dict
    is unchanged: :func:`eatlib.persistence.load_model` rebuilds the ensemble on one device.
    """
    members = getattr(ensemble, "members", None)
    if members is None:
        raise ConfigError(
            f"member_devices: got {list(devices)} for a {type(ensemble).__name__}; allowed: only for an ensemble "
            "(defenses eat and adp)"
        )
    if len(devices) != len(members):
        raise ConfigError(
            f"member_devices: got {len(devices)} devices {list(devices)}; allowed: one per member ({len(members)})"
        )
    for member, device in zip(members, devices, strict=True):
        device = torch.device(device)
        member.to(device)
        member.register_forward_pre_hook(lambda _, args, device=device: tuple(
            a.to(device) if isinstance(a, torch.Tensor) else a for a in args))
        member.register_forward_hook(lambda _, args, output: output.to(home))
