"""Training cost of each defense: seconds per epoch and forward-backward images per epoch.

Runs each training defense's step function (as built by :func:`eatlib.defenses.build_training` from params.yaml's
``defenses:`` section) with the shared trainer's optimiser on class-balanced batches of the glyphs training split,
for ``--batches`` timed batches after one warm-up batch, and extrapolates to a whole epoch (batches per epoch x
median seconds per batch). Forward-backward images are counted exactly by :class:`eatlib.train.ForwardCounter`
(members of an ensemble separately, attack steps included). The attack runs at its full eps (after warm-up).

The check: EAT with M members must cost at most 1.1 x M times one ``pgd_at`` epoch, in time and in images.
Defenses are timed round-robin, batch by batch (the order rotating every round), so that load from other
processes on a shared machine hits every defense alike; both wall-clock and CPU seconds (this process's, all
threads) are reported, medians over the batches. On a loaded machine the CPU seconds are the steadier measure;
quote either with the machine's load.

    .venv/bin/python benchmarks/defense_cost.py [--params params.yaml] [--arch cnn4|<models key>]
        [--defenses standard pgd_at ...] [--eat-transfers ensemble bn_stats none] [--batches 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from eatlib.data import ClassBalancedBatchSampler
from eatlib.defenses import TRAINING_DEFENSES, build_training
from eatlib.load import load_params
from eatlib.models import build_model
from eatlib.pipeline import build_network, load_data
from eatlib.train import Batch, ForwardCounter, build_optimizer


def class_balanced_batches(dataset, cfg, seed):
    """Batches exactly as the trainer makes them (in-memory uint8 images sliced and scaled)."""
    sampler = ClassBalancedBatchSampler(dataset.labels, cfg.batch_size, cfg.samples_per_class, seed=seed)
    sampler.set_epoch(0)
    labels = torch.as_tensor(dataset.labels, dtype=torch.long)
    batches = []
    for indices in sampler:
        indices = torch.as_tensor(indices, dtype=torch.long)
        batches.append(Batch(dataset.images[indices].float().div_(255), labels[indices], indices))
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--arch", default="cnn4", help="'cnn4' or a key of `models` in params.yaml")
    parser.add_argument("--defenses", nargs="+", default=sorted(TRAINING_DEFENSES))
    parser.add_argument("--eat-transfers", nargs="*", default=[],
                        help="also time eat with these transfer variants (each_member, ensemble, bn_stats, none)")
    parser.add_argument("--batches", type=int, default=5, help="timed batches per defense")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a loaded machine, multi-threaded ops spin-wait for each "
                             "other and their times say more about the load than about the defense)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    params = load_params(args.params)
    splits = load_data(params)
    train, cfg = splits.train, params.train
    if args.arch in params.models:
        make_member = lambda: build_network(params, args.arch)
    else:
        make_member = lambda: build_model(args.arch, embedding_dim=128, image_size=params.data.image_size)
    batches = class_balanced_batches(train, cfg, params.seed)
    print(f"glyphs train split: {len(train)} images, {train.num_classes} classes, {len(batches)} batches of "
          f"{cfg.batch_size}; arch {args.arch}; {torch.get_num_threads()} threads; "
          f"timing {args.batches} batches per defense after 1 warm-up, round-robin")

    variants = [(name, name, params.defense_options(name)) for name in args.defenses]
    variants += [(f"eat:{t}", "eat", replace(params.defense_options("eat"), transfer=t)) for t in args.eat_transfers]
    runs = {}
    for label, name, options in variants:
        torch.manual_seed(params.seed)
        setup = build_training(name, options, make_member=make_member, num_classes=train.num_classes,
                               num_samples=len(train), loss_cfg=cfg.loss, seed=params.seed)
        if hasattr(setup.step, "set_epoch"):
            setup.step.set_epoch(10**6)  # past any eps warm-up: full-cost inner maximisation
        setup.model.train()
        runs[label] = {"setup": setup, "optimizer": build_optimizer(setup.model, setup.criterion, cfg),
                      "counter": ForwardCounter(setup.model), "wall": [], "cpu": [], "images": 0}

    def one_step(run, batch):
        setup = run["setup"]
        wall, cpu = time.perf_counter(), time.process_time()
        loss = setup.step(setup.model, setup.criterion, batch)
        run["optimizer"].zero_grad(set_to_none=True)
        loss.backward()
        run["optimizer"].step()
        return time.perf_counter() - wall, time.process_time() - cpu

    names = list(runs)
    for i in range(args.batches + 1):
        batch = batches[i % len(batches)]
        for name in names[i % len(names):] + names[: i % len(names)]:
            run = runs[name]
            run["counter"].images = 0
            wall, cpu = one_step(run, batch)
            if i > 0:  # the first batch warms up allocators and caches
                run["wall"].append(wall)
                run["cpu"].append(cpu)
                run["images"] += run["counter"].images

    epoch = {}  # name -> (wall s, cpu s, images) per epoch
    for name, run in runs.items():
        run["counter"].close()
        epoch[name] = (statistics.median(run["wall"]) * len(batches), statistics.median(run["cpu"]) * len(batches),
                       run["images"] / args.batches * len(batches))
    base = epoch.get("pgd_at")
    print(f"\n{'defense':<16} {'wall s/epoch':>12} {'cpu s/epoch':>12} {'fwd-bwd images/epoch':>21}"
          + ("   x pgd_at: wall   cpu  images" if base else ""))
    for name, (wall, cpu, images) in epoch.items():
        ratio = f"{wall / base[0]:18.2f} {cpu / base[1]:5.2f} {images / base[2]:7.2f}" if base else ""
        print(f"{name:<16} {wall:12.1f} {cpu:12.1f} {images:21,.0f}{ratio}")
    print()
    for label, name, options in variants:
        if base is None or name != "eat":
            continue
        limit = 1.1 * options.members
        ratios = [epoch[label][k] / base[k] for k in range(3)]
        verdict = "OK" if max(ratios[1:]) <= limit else "TOO EXPENSIVE"
        print(f"{label} ({options.members} members, transfer {options.transfer}) / pgd_at: {ratios[0]:.2f}x wall, "
              f"{ratios[1]:.2f}x cpu, {ratios[2]:.2f}x images; limit 1.1 x M = {limit:.1f}x (cpu time and images) "
              f"-> {verdict}")


if __name__ == "__main__":
    main()
