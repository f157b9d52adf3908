"""The one training loop every defense shares.

A defense is a *step function* ``step(model, criterion, batch) -> loss`` (with an optional ``set_epoch(epoch)``,
called before every epoch, for schedules such as eps warm-up); the trainer owns everything around it:
class-balanced batches, AdamW with a separate proxy learning rate, linear warm-up and step decay, optional frozen
BatchNorm, bf16 autocast on CUDA, a validation pass on held-out *training* classes after every epoch (never the
test classes), an atomic checkpoint every epoch and exact resume.

Exact resume: every source of randomness inside an epoch is seeded from ``(seed, epoch)`` (the batch order by the
sampler, the torch generator by :func:`epoch_seed`), so continuing from the checkpoint of epoch ``e`` replays
epochs ``e+1..`` exactly as an uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from eatlib import checkpoint
from eatlib.config import TrainConfig, to_dict
from eatlib.data import ClassBalancedBatchSampler
from eatlib.evaluate import embed
from eatlib.losses import proxy_parameters
from eatlib.metrics import embedding_metrics

CHECKPOINT = "checkpoint.pt"
FINAL = "model.pt"


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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


class ForwardCounter:
    """Counts images passed forward with gradients enabled through every embedding network inside ``model``
    (members of an ensemble count separately; an attack's inner steps count too). This is the training cost
    the defense tables report, independent of how a defense spends it."""

    def __init__(self, model: nn.Module):
        from eatlib.models import EmbeddingNet

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
    uint8 tensor, else loaded through a DataLoader."""

    def __init__(self, dataset, cfg: TrainConfig, seed: int, device: torch.device):
        self.dataset, self.device = dataset, device
        self.sampler = ClassBalancedBatchSampler(dataset.labels, cfg.batch_size, cfg.samples_per_class, seed=seed)
        self.labels = torch.as_tensor(dataset.labels, dtype=torch.long)
        self.num_workers = cfg.num_workers

    def __len__(self):
        return len(self.sampler)

    def epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)
        images = getattr(self.dataset, "images", None)
        for indices in self.sampler:
            indices = torch.as_tensor(indices, dtype=torch.long)
            if isinstance(images, torch.Tensor):
                batch = images[indices].to(self.device, torch.float32).div_(255)
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
) -> list[dict]:
    """Train ``model`` (and the proxies inside ``criterion``) in place; return the per-epoch history.

    Writes ``out_dir/checkpoint.pt`` after every epoch (everything needed to resume) and the deployable
    ``final_path`` (default ``out_dir/model.pt``: weights, configs and history) at the end. With ``resume`` an
    existing checkpoint made with the same configuration is continued; one made with a different configuration
    is an error, not silently mixed.
    ``meta`` (plain data: model config, defense options, ...) is stored in both files and must match on resume.
    Model and criterion must already be on the training device.
    """
    out_dir = Path(out_dir)
    device = next(model.parameters()).device
    meta = {"train": to_dict(cfg), "seed": seed, **(meta or {})}
    batches = _Batches(train_set, cfg, seed, device)
    optimizer = build_optimizer(model, criterion, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, len(batches), cfg))
    history: list[dict] = []
    start_epoch = 0
    ckpt_path = out_dir / CHECKPOINT
    if resume and ckpt_path.exists():
        state = checkpoint.load(ckpt_path)
        if state["meta"] != meta:
            raise ValueError(
                f"{ckpt_path} was made with a different configuration; delete {out_dir} to train from scratch "
                "or restore the parameters it was made with"
            )
        model.load_state_dict(state["model"])
        criterion.load_state_dict(state["criterion"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch = state["history"], state["epoch"]

    autocast = device.type == "cuda" and cfg.amp
    counter = ForwardCounter(model)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            torch.manual_seed(epoch_seed(seed, epoch))
            if hasattr(step, "set_epoch"):  # schedules inside a defense (e.g. eps warm-up) follow the epoch
                step.set_epoch(epoch)
            set_train_mode(model, cfg.freeze_bn)
            criterion.train()
            started, losses, counter.images = time.perf_counter(), [], 0
            bar = tqdm(batches.epoch(epoch), total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not progress, leave=False)
            for i, batch in enumerate(bar):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = step(model, criterion, batch)
                if not torch.isfinite(loss):
                    last = f"{ckpt_path} (after epoch {epoch})" if ckpt_path.exists() else "none yet"
                    raise FloatingPointError(
                        f"loss is {loss.item()} at epoch {epoch + 1}, step {i + 1}; last good checkpoint: {last}. "
                        "Lower train.lr or enable train.grad_clip."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            record = {
                "epoch": epoch + 1,
                "loss": sum(losses) / len(losses),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
                "forward_backward_images": counter.images,
            }
            if val_set is not None and len(val_set) > 0:
                record.update(validate(model, val_set, cfg, seed))
            history.append(record)
            if progress:
                tqdm.write(" ".join(f"{k}={_fmt(v)}" for k, v in record.items()))
            checkpoint.save_atomic(
                {
                    "model": model.state_dict(),
                    "criterion": criterion.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "meta": meta,
                },
                ckpt_path,
            )
    finally:
        counter.close()
    save_model(model, final_path or out_dir / FINAL, meta=meta, history=history)
    return history


def save_model(model: nn.Module, path: str | Path, *, meta: dict | None = None, history: list | None = None) -> None:
    """The deployable artefact: weights + the config that rebuilds the model (``load_model``)."""
    checkpoint.save_atomic(
        {"model_config": model.config, "state_dict": model.state_dict(), "meta": meta or {}, "history": history or []},
        path,
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model (single network or ensemble) saved by :func:`save_model`, in eval mode."""
    from eatlib.models import model_from_config

    state = checkpoint.load(path)
    model = model_from_config(state["model_config"])
    model.load_state_dict(state["state_dict"])
    return model.to(resolve_device(device)).eval()


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
