"""Engine speed (issue 11): before/after of the speed levers on the pipeline's own workload, in one run.

For each default architecture (params.yaml ``models``: resnet = resnet18 width 16, mobilenet = mobilenet_v2 width
0.5, one block per stage, last conv; embedding 128; 32px) and a 3-member Ensemble of each:

- attack: adversarial images/s of the headline attack (PGD-20 L-inf 8/255, centroid) at batch 250 on the
  BatchNorm-folded eval network (what ``evaluate_robustness`` attacks), float32 crafting ("before", today's
  path) and bf16 crafting ("after": ``amp=True``, CPU autocast with strided depthwise convs kept float32);
- training: images/s of one full adversarial training step at batch 120 (PGD-5 crafting + the float32 weight
  update + AdamW): ``pgd_at`` for a single network, ``eat`` for an ensemble; before = float32 crafting, after =
  ``build_training(..., craft_bf16=True)``;
- flops_fraction: the FLOPs of one "after" training step (torch.utils.flop_counter) per second, over this CPU's
  float32 matmul FLOP/s (a timed 2048 x 2048 torch.mm); with bf16 crafting also over the bf16 matmul FLOP/s;
- ours / torchattacks PGD time on the same single network (benchmarks/attack_speed.py's comparison).

Two levers, measured apart: bf16 crafting (above) and glibc's allocator keeping the memory it frees
(eatlib.runtime.GLIBC_TUNABLES, which every pipeline stage starts with). Tunables are read when a process starts,
so the script runs itself twice, one process per allocator, one after the other: "before" is today's pipeline
path as it was (float32 crafting, glibc's default allocator), "after" is the pipeline's path now (the faster
crafting, tuned allocator); ``levers`` splits the speedup into bf16 (default allocator) and malloc (the faster
crafting, tuned over default allocator). Folded crafting (``build_training(..., craft_folded=True)``) is measured
too, as ``folded_over_after``: not in the pipeline's path, since it changes training numerics by rounding.
Speedups come from one run of the script. Writes
results/benchmarks/engine.json::

    {"<arch or ensemble>": {"attack_speedup": f, "train_speedup": f, "flops_fraction": f, ...}, ...}

    .venv/bin/python benchmarks/engine.py [--quick] [--archs resnet mobilenet] [--threads N]
                                         [--malloc both|default|tuned]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from attack_speed import compare_with_torchattacks  # benchmarks/attack_speed.py, beside this script
from torch.utils.flop_counter import FlopCounterMode

from eatlib.attacks import HEADLINE, build_attack
from eatlib.defenses import build_training
from eatlib.models import Ensemble, build_model, fold_batchnorm
from eatlib.params import LossConfig, TrainConfig
from eatlib.runtime import allocator_tuned, tuned_environment
from eatlib.train import Batch, build_optimizer

ARCHS = {"resnet": ("resnet18", {"width": 16}),
         "mobilenet": ("mobilenet_v2", {"width_mult": 0.5, "max_blocks": 1, "last_conv": True})}
OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "engine.json"


class _NoModules:
    """A stand-in for FlopCounterMode's module tracker: totals only. The tracker's backward hooks do not support
    ``torch.autograd.grad`` (the attacks' input gradients), so it is swapped out."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def count_flops(fn) -> int:
    """Total FLOPs of ``fn()`` (torch.utils.flop_counter: matmuls and convolutions, forward and backward)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModules()
    with counter:
        fn()
    return counter.get_total_flops()


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def matmul_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / best_time(lambda: torch.mm(a, b), repeats)


def make_member(arch: str, options: dict):
    return lambda: build_model(arch, embedding_dim=128, image_size=32, **options)


def attack_rate(model, images, steps: int, amp: bool, repeats: int) -> float:
    with torch.no_grad():
        clean = torch.cat([model(images), model(images.flip(3))])
    labels = torch.arange(len(clean)) % 50
    attack = build_attack({**HEADLINE, "steps": steps}, model, clean_embeddings=clean, labels=labels, amp=amp)
    index = torch.arange(len(images))
    return len(images) / best_time(lambda: attack(images, index), repeats)


def training_step(name: str, member, craft_bf16: bool, batch: int, steps: int, craft_folded: bool = False):
    """``(run, setup)``: ``run()`` does one adversarial training step on a fixed random class-balanced batch."""
    torch.manual_seed(0)
    classes = 100
    options = {"attack": {"steps": steps, "warmup_epochs": 0}, **({"members": 3} if name == "eat" else {})}
    setup = build_training(name, options, make_member=member, num_classes=classes, num_samples=10 * batch,
                           loss_cfg=LossConfig(), seed=0, craft_bf16=craft_bf16, craft_folded=craft_folded)
    optimizer = build_optimizer(setup.model, setup.criterion, TrainConfig(batch_size=batch, samples_per_class=4))
    data = Batch(torch.rand(batch, 3, 32, 32), torch.arange(batch) // 4 % classes, torch.arange(batch))
    setup.model.train()

    def run():
        optimizer.zero_grad()
        setup.step(setup.model, setup.criterion, data).backward()
        optimizer.step()

    return run, setup


def measure(label: str, model_fn, train_name: str, member, args, peaks: dict) -> dict:
    model = model_fn().eval()
    folded = fold_batchnorm(model)
    images = torch.rand(args.attack_batch, 3, 32, 32)
    attack = {amp: attack_rate(folded, images, args.steps, amp, args.repeats) for amp in (False, True)}
    train = {}
    for bf16 in (False, True):
        run, _ = training_step(train_name, member, bf16, args.train_batch, args.train_steps)
        train[bf16] = args.train_batch / best_time(run, args.repeats)
    # Per architecture, bf16 only where it pays: the "after" path is the faster of the two.
    attack_bf16, train_bf16 = attack[True] > attack[False], train[True] > train[False]
    run, _ = training_step(train_name, member, train_bf16, args.train_batch, args.train_steps)
    flops = count_flops(run)
    seconds = best_time(run, args.repeats)
    achieved = flops / seconds
    # Measured, not in the pipeline's path yet: crafting against a BatchNorm-folded copy changes the training
    # numerics (by rounding), so adopting it means re-running every trained model and the readings.
    folded, _ = training_step(train_name, member, train_bf16, args.train_batch, args.train_steps, craft_folded=True)
    folded_rate = args.train_batch / best_time(folded, args.repeats)
    row = {"attack_speedup": attack[attack_bf16] / attack[False], "train_speedup": train[train_bf16] / train[False],
           "flops_fraction": achieved / peaks["fp32"],
           "attack_images_per_s": {"before": attack[False], "after": attack[attack_bf16]},
           "train_images_per_s": {"before": train[False], "after": train[train_bf16]},
           "attack_bf16": attack_bf16, "craft_bf16": train_bf16,
           "attack_images_per_s_bf16": attack[True], "train_images_per_s_bf16": train[True],
           "train_step_gflop": flops / 1e9, "achieved_gflops": achieved / 1e9,
           "train_images_per_s_folded": folded_rate, "folded_over_after": folded_rate / train[train_bf16]}
    if train_bf16:
        row["flops_fraction_bf16"] = achieved / peaks["bf16"]
    print(f"{label:22s} attack {attack[False]:7.1f} -> {attack[attack_bf16]:7.1f} adv img/s "
          f"({row['attack_speedup']:.2f}x, bf16 {attack[True]:.1f}) | train {train[False]:6.1f} -> "
          f"{train[train_bf16]:6.1f} img/s ({row['train_speedup']:.2f}x, bf16 crafting {train[True]:.1f}) | "
          f"step {row['train_step_gflop']:.1f} GFLOP at {row['achieved_gflops']:.1f} GFLOP/s = "
          f"{row['flops_fraction']:.3f} of fp32 mm peak | folded crafting {folded_rate:.1f} img/s "
          f"({row['folded_over_after']:.2f}x, not adopted)", flush=True)
    return row


def measure_all(args) -> dict:
    """Every row, in this process (and so with the allocator this process started with)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    args.steps, args.train_steps, args.repeats = (5, 2, 2) if args.quick else (20, 5, 2)
    args.attack_batch, args.train_batch = 250, 120
    peaks = {"fp32": matmul_flops(torch.float32), "bf16": matmul_flops(torch.bfloat16)}
    print(f"[malloc {args.malloc}] torch {torch.__version__}, {torch.get_num_threads()} threads, cores "
          f"{os.cpu_count()}; matmul 2048^2: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} "
          f"GFLOP/s; attack PGD-{args.steps} batch {args.attack_batch}, training PGD-{args.train_steps} batch "
          f"{args.train_batch}", flush=True)
    results = {"_machine": {"threads": torch.get_num_threads(), "fp32_matmul_gflops": peaks["fp32"] / 1e9,
                            "bf16_matmul_gflops": peaks["bf16"] / 1e9, "quick": args.quick}}
    for name in args.archs:
        arch, options = ARCHS[name]
        member = make_member(arch, options)
        results[name] = measure(name, member, "pgd_at", member, args, peaks)
        if not args.quick:
            net = member().eval()
            images = torch.rand(128, 3, 32, 32)
            ratio = compare_with_torchattacks(net, images, SimpleNamespace(steps=args.steps, repeats=3))
            results[name]["ours_over_torchattacks"] = ratio
        ensemble = lambda m=member: Ensemble([m() for _ in range(3)])  # noqa: E731
        results[f"{name}_ensemble3"] = measure(f"{name} x3 ensemble", ensemble, "eat", member, args, peaks)
    return results


def run_with_allocator(malloc: str, argv: list[str]) -> dict:
    """This script's rows from a child process started with glibc's default (``default``) or the pipeline's
    (``tuned``) allocator tunables."""
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env = tuned_environment(plain) if malloc == "tuned" else plain
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        subprocess.run([sys.executable, __file__, *argv, "--malloc", malloc, "--out", str(out)], env=env,
                       check=True)
        return json.loads(out.read_text())


def combine(default: dict, tuned: dict) -> dict:
    """One row per network: before = default allocator, float32 crafting; after = tuned allocator, the faster
    crafting; ``levers``: each lever's own factor."""
    rows = {"_machine": {**tuned["_machine"], "malloc": "both"}}
    for name, old in default.items():
        if name.startswith("_"):
            continue
        new = tuned[name]
        before = {"attack": old["attack_images_per_s"]["before"], "train": old["train_images_per_s"]["before"]}
        after = {"attack": new["attack_images_per_s"]["after"], "train": new["train_images_per_s"]["after"]}
        rows[name] = {
            **new,
            "attack_speedup": after["attack"] / before["attack"], "train_speedup": after["train"] / before["train"],
            "attack_images_per_s": {"before": before["attack"], "after": after["attack"]},
            "train_images_per_s": {"before": before["train"], "after": after["train"]},
            "levers": {"attack": {"bf16": old["attack_speedup"],
                                  "malloc": after["attack"] / old["attack_images_per_s"]["after"]},
                       "train": {"bf16": old["train_speedup"],
                                 "malloc": after["train"] / old["train_images_per_s"]["after"],
                                 "folded_not_adopted": new["folded_over_after"]}},
            "default_allocator": {key: old[key] for key in ("attack_images_per_s", "train_images_per_s",
                                                            "attack_bf16", "craft_bf16", "flops_fraction")},
        }
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="PGD-5 attack, PGD-2 training, 1 repeat, no torchattacks")
    parser.add_argument("--archs", nargs="*", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--malloc", choices=["both", "default", "tuned"], default="both",
                        help="both: one child process per allocator, combined (the default); default/tuned: this "
                             "process only, which must have started with that allocator (writes only with --out)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.malloc == "both":
        passed = [*(["--quick"] if args.quick else []), "--archs", *args.archs,
                  *(["--threads", str(args.threads)] if args.threads else [])]
        results = combine(run_with_allocator("default", passed), run_with_allocator("tuned", passed))
    else:
        if allocator_tuned() != (args.malloc == "tuned"):
            raise SystemExit(f"--malloc {args.malloc}: this process started with GLIBC_TUNABLES="
                             f"{os.environ.get('GLIBC_TUNABLES', '')!r}; run --malloc both, or start it with "
                             f"{'eatlib.runtime.GLIBC_TUNABLES' if args.malloc == 'tuned' else 'no GLIBC_TUNABLES'}")
        results = measure_all(args)
    if args.malloc == "both" or args.out != OUT:
        # Rows of architectures not run this time are kept (``--archs resnet`` then ``--archs mobilenet``).
        kept = json.loads(args.out.read_text()) if args.out.exists() and args.malloc == "both" else {}
        kept.update(results)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(kept, indent=2) + "\n")
        print(f"wrote {args.out}")
    if args.malloc == "both":
        for name, row in results.items():
            if not name.startswith("_"):
                levers = row["levers"]
                print(f"{name:20s} attack {row['attack_speedup']:.2f}x (bf16 {levers['attack']['bf16']:.2f}x, "
                      f"malloc {levers['attack']['malloc']:.2f}x) | train {row['train_speedup']:.2f}x (bf16 "
                      f"{levers['train']['bf16']:.2f}x, malloc {levers['train']['malloc']:.2f}x)")


if __name__ == "__main__":
    main()
