"""The one training loop every defense shares.

A defense is a *step function* ``step(model, criterion, batch) -> loss`` (with an optional ``set_epoch(epoch)``,
called before every epoch, for schedules such as eps warm-up); the trainer owns everything around it:
class-balanced batches, AdamW with a separate proxy learning rate, linear warm-up and step decay, optional frozen
BatchNorm, bf16 autocast on CUDA, a validation pass on held-out *training* classes after every epoch (never the
test classes), an atomic checkpoint every epoch and exact resume.

Exact resume: every source of randomness inside an epoch is seeded from ``(seed, epoch)`` (the batch order by the
sampler, the torch generator by :func:`epoch_seed`), so continuing from the checkpoint of epoch ``e`` replays
epochs ``e+1..`` exactly as an uninterrupted run would. Checkpoints are keyed by the run's configuration and
deleted once the final model is written (:mod:`eatlib.persistence`): only an interrupted run of the same
configuration is resumed; anything else trains from scratch.

Multi-process: under ``torchrun`` (an initialised process group) :func:`fit` trains with DistributedDataParallel;
``batch_size`` is the global batch and the loss that of the global batch (see :mod:`eatlib.distributed`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from eatlib import distributed
from eatlib.data import ClassBalancedBatchSampler
from eatlib.data.augment import affine_draws, apply_affine, is_identity
from eatlib.evaluate import embed
from eatlib.losses import proxy_parameters
from eatlib.metrics import embedding_metrics
from eatlib.models import EmbeddingNet
from eatlib.params import ConfigError, TrainConfig, to_dict
from eatlib.persistence import FINAL, RunFiles, describe_existing_model, save_model


class ResumeError(ValueError):
    """An existing checkpoint that this run must not continue (made with other parameters)."""


@dataclass
class Batch:
    """One training batch: images in [0,1] on the training device, labels, and the images' dataset indices
    (defenses that give members different data parts need to know which samples they hold)."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


StepFn = Callable[[nn.Module, nn.Module, Batch], torch.Tensor]


def standard_step(model: nn.Module, criterion: nn.Module, batch: Batch) -> torch.Tensor:
    """Undefended metric learning: the loss on clean images."""
    return criterion(model(batch.images), batch.labels)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of ``epoch`` on process ``rank``: :func:`epoch_seed` on rank 0 (and in a single process);
    other ranks draw other random numbers (attack starts, mixup) for their other images."""
    return epoch_seed(seed, epoch) + (rank << 32)


def augment_seed(seed: int, epoch: int) -> int:
    """The seed of ``epoch``'s augmentation draws: one stream for the global batch, the same on every rank."""
    return epoch_seed(seed, epoch) + (1 << 48)


class ForwardCounter:
    """Counts images passed forward with gradients enabled through every embedding network inside ``model``
    (members of an ensemble count separately; an attack's inner steps count too). This is the training cost
    the defense tables report, independent of how a defense spends it."""

    def __init__(self, model: nn.Module):
        nets = [m for m in model.modules() if isinstance(m, EmbeddingNet)] or [model]
        self.images = 0
        self._handles = [net.register_forward_hook(self._hook) for net in nets]

    def _hook(self, module, inputs, output):
        if torch.is_grad_enabled():
            self.images += int(inputs[0].shape[0])

    def close(self):
        for handle in self._handles:
            handle.remove()


def build_optimizer(model: nn.Module, criterion: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
    proxies = proxy_parameters(criterion)
    if proxies:
        groups.append({"params": proxies, "lr": cfg.lr * cfg.loss.proxy_lr_multiplier})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_epochs``, then ``lr_gamma`` at each milestone epoch."""
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    epoch = step // steps_per_epoch
    return warm * cfg.lr_gamma ** sum(epoch >= m for m in cfg.lr_milestones)


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class _Batches:
    """Class-balanced batches of a dataset, sliced straight from memory when the dataset holds its images as a
    uint8 tensor, else loaded image by image. Under torchrun every rank draws the same global batches and keeps
    its own contiguous share (:func:`eatlib.distributed.shard`); augmentation is drawn for the whole global batch
    from one generator seeded per epoch (:func:`augment_seed`), so each sample gets the same transform whatever
    the number of processes."""

    def __init__(self, dataset, cfg: TrainConfig, seed: int, device: torch.device, current: distributed.World):
        self.dataset, self.device = dataset, device
        self.sampler = ClassBalancedBatchSampler(dataset.labels, cfg.batch_size, cfg.samples_per_class, seed=seed)
        self.share = distributed.shard(cfg.batch_size, current)
        self.labels = torch.as_tensor(dataset.labels, dtype=torch.long)
        self.augment = dataclasses.asdict(cfg.augment)
        self.augmenting = not is_identity(**self.augment)  # decided once, not per batch
        self.batch_size, self.seed = cfg.batch_size, seed

    def __len__(self):
        return len(self.sampler)

    def epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)
        images = getattr(self.dataset, "images", None)
        generator = torch.Generator().manual_seed(augment_seed(self.seed, epoch))
        for indices in self.sampler:
            indices = torch.as_tensor(indices[self.share], dtype=torch.long)
            if isinstance(images, torch.Tensor):
                batch = images[indices].to(self.device, torch.float32).div_(255)
                if self.augmenting:
                    theta = affine_draws(self.batch_size, generator=generator, **self.augment)[self.share]
                    batch = apply_affine(batch, theta)
            else:
                batch = torch.stack([self.dataset[int(i)][0] for i in indices]).to(self.device)
            yield Batch(batch, self.labels[indices].to(self.device), indices.to(self.device))


def validate(model: nn.Module, dataset, cfg: TrainConfig, seed: int) -> dict[str, float]:
    """R@1 and NMI on the validation classes (held out of the training classes)."""
    was_training = model.training
    model.eval()
    embeddings, labels = embed(model, dataset, batch_size=cfg.eval_batch_size)
    model.train(was_training)
    scores = embedding_metrics(embeddings, labels, seed=seed, ks=(1,))
    return {"val_nmi": scores["nmi"], "val_ami": scores["ami"], "val_recall@1": scores["recall@1"]}


def fit(
    model: nn.Module,
    criterion: nn.Module,
    train_set,
    val_set,
    cfg: TrainConfig,
    *,
    out_dir: str | Path,
    seed: int = 0,
    step: StepFn = standard_step,
    resume: bool = True,
    progress: bool = True,
    meta: dict | None = None,
    final_path: str | Path | None = None,
    sync_bn: bool = False,
    global_loss: bool | None = None,
    member_devices: list[str] | None = None,
) -> list[dict]:
    """Train ``model`` (and the proxies inside ``criterion``) in place; return the per-epoch history.

    Writes ``out_dir/checkpoint-<key>.pt`` after every epoch (everything needed to resume; ``<key>`` hashes
    ``meta``, see :class:`eatlib.persistence.RunFiles`) and the deployable ``final_path`` (default
    ``out_dir/model.pt``: weights, configs and history) at the end, then deletes the checkpoints. With ``resume``
    an interrupted run of the same configuration is continued; checkpoints of other configurations are left alone
    and ignored (a notice says so), and a final model already at ``final_path`` is replaced (a notice says so).
    ``meta`` (plain data: model config, defense options, starting network ...) is stored in both files.
    Model and criterion must already be on the training device.

    Under torchrun (a process group initialised by :func:`eatlib.distributed.init_from_env`): DDP over the model
    and the criterion; ``cfg.batch_size`` is the global batch, each rank trains on ``batch_size / world_size``
    of it; only rank 0 validates, writes files and shows progress; every rank returns rank 0's history.
    ``global_loss`` (default: True unless ``criterion`` is a ``ModuleList`` of per-member losses, whose calls
    depend on each rank's data) computes the loss of the global batch on every rank
    (:func:`eatlib.distributed.gather_loss_inputs`); else each rank's loss is that of its share.
    ``sync_bn``: BatchNorm with global-batch statistics (torch's SyncBatchNorm, CUDA only; converts the model's
    BatchNorm layers in place). Both only act with more than one process.
    ``member_devices`` (one process only): put member m of an ensemble on ``member_devices[m]``
    (:func:`eatlib.distributed.place_members`); the images, losses and proxies stay on the model's device.
    """
    out_dir = Path(out_dir)
    current = distributed.world()
    device = next(model.parameters()).device
    if member_devices:
        if current.active:
            raise ConfigError("member_devices: allowed in a single process only; under torchrun each rank holds "
                             "the whole model on its own GPU")
        distributed.place_members(model, member_devices, home=device)
    if sync_bn and current.active:
        distributed.convert_sync_batchnorm(model)
    meta = {"train": to_dict(cfg), "seed": seed, **(meta or {})}
    batches = _Batches(train_set, cfg, seed, device, current)
    optimizer = build_optimizer(model, criterion, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, len(batches), cfg))
    history: list[dict] = []
    start_epoch = 0
    final_path = Path(final_path or out_dir / FINAL)
    files = RunFiles(out_dir, meta)
    if current.is_main:
        files.remove_partial_writes()
    state = files.load() if resume else None
    if current.is_main:
        _announce(files, state, final_path, meta)
    if state is not None:
        if state["meta"] != meta:  # a hash collision, or a file renamed by hand
            raise ResumeError(f"{files.latest} was made with a different configuration; delete it to train anew")
        model.load_state_dict(state["model"])
        criterion.load_state_dict(state["criterion"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("step") is not None and hasattr(step, "load_state_dict"):  # e.g. EAT's weight averages
            step.load_state_dict(state["step"])
        history, start_epoch = state["history"], state["epoch"]
    if current.active and not distributed.all_true(distributed.broadcast_from_main(start_epoch) == start_epoch,
                                                   device):
        raise ResumeError(f"the ranks found different checkpoints in {out_dir}: put it on a file system that every "
                          "rank reads (ranks resume from the files rank 0 wrote)")

    run_step = _StepRunner(model, criterion, step, current, global_loss)
    show = progress and current.is_main
    autocast = device.type == "cuda" and cfg.amp
    counter = ForwardCounter(model)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            torch.manual_seed(rank_seed(seed, epoch, current.rank))
            if hasattr(step, "set_epoch"):  # schedules inside a defense (e.g. eps warm-up) follow the epoch
                step.set_epoch(epoch)
            set_train_mode(model, cfg.freeze_bn)
            criterion.train()
            started, losses, counter.images = time.perf_counter(), [], 0
            bar = tqdm(batches.epoch(epoch), total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not show, leave=False)
            for i, batch in enumerate(bar):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = run_step(batch)
                finite = bool(torch.isfinite(loss))
                if current.active:  # every rank stops together, whichever rank saw it
                    finite = distributed.all_true(finite, device)
                if not finite:
                    last = f"{files.latest} (after epoch {epoch})" if files.latest.exists() else "none yet"
                    value = f"{loss.item()} on rank {current.rank}" if current.active else f"{loss.item()}"
                    raise FloatingPointError(
                        f"loss is {value} at epoch {epoch + 1}, step {i + 1}; last good checkpoint: {last}. "
                        "Lower train.lr or enable train.grad_clip."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                if hasattr(step, "after_optimizer_step"):  # e.g. EAT's momentum averages follow the update
                    step.after_optimizer_step()
                scheduler.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            loss_sum, steps, images = float(sum(losses)), len(losses), counter.images
            if current.active:  # cost and mean loss of the whole step, over every rank
                loss_sum, steps, images = distributed.sum_over_ranks([loss_sum, steps, images], device)
            record = {
                "epoch": epoch + 1,
                "loss": loss_sum / steps,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
                "forward_backward_images": int(images),
            }
            if hasattr(step, "epoch_info"):  # what a defense's schedule used this epoch (e.g. its eps)
                record.update(step.epoch_info())
                # A double backward (EAT's gradient-diversity term) is compute the budget must count.
                record["forward_backward_images"] += int(record.get("gradient_diversity_images", 0))
            if current.is_main:
                if val_set is not None and len(val_set) > 0:
                    record.update(validate(model, val_set, cfg, seed))
                history.append(record)
                if show:
                    tqdm.write(" ".join(f"{k}={_fmt(v)}" for k, v in record.items()))
                files.save(
                    {
                        "model": model.state_dict(),
                        "criterion": criterion.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "step": step.state_dict() if hasattr(step, "state_dict") else None,
                        "epoch": epoch + 1,
                        "history": history,
                        "meta": meta,
                    }
                )
            else:
                history.append(record)
            distributed.barrier()  # the checkpoint is on disk before any rank goes on
    finally:
        counter.close()
        run_step.close()
    history = distributed.broadcast_from_main(history)
    if current.is_main:
        save_model(model, final_path, meta=meta, history=history)
        files.finish()
    distributed.barrier()
    return history


def _announce(files: RunFiles, state: dict | None, final_path: Path, meta: dict) -> None:
    """Say what this run does with what it found in its folder (printed, so a CLI user and a notebook see it)."""
    notes = []
    if state is not None:
        notes.append(f"resuming the interrupted run in {files.latest} after epoch {state['epoch']}")
    for other in files.others():
        notes.append(f"{other} is a checkpoint of another configuration (or an older eatlib); left as is, ignored")
    replaced = describe_existing_model(final_path, meta)
    if replaced:
        notes.append(replaced)
    for note in notes:
        print(f"eatlib.train: {note}", file=sys.stderr, flush=True)


class _StepRunner:
    """``runner(batch) -> loss``: the defense's step, in a single process or through DDP (see :func:`fit`)."""

    def __init__(self, model, criterion, step, current: distributed.World, global_loss: bool | None):
        self._handles = []
        if not current.active:
            self._run = lambda batch: step(model, criterion, batch)
            return
        per_member = isinstance(criterion, nn.ModuleList)
        if global_loss if global_loss is not None else not per_member:
            self._handles.append(distributed.gather_loss_inputs(criterion))
        # Ensemble members may have no sample of a rank's share in a step: DDP must not wait for their gradients.
        ddp = distributed.data_parallel(distributed.StepModule(model, criterion, step, Batch),
                                        find_unused_parameters=per_member)
        self._run = lambda batch: ddp(batch.images, batch.labels, batch.indices)

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self._run(batch)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
