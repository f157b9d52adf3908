"""Training throughput of each backbone at 32px and the cost of evaluating 10,000 embeddings.

Training: images/s of forward + backward + AdamW step with Proxy-Anchor (pytorch-metric-learning, proxies in their
own param group at 100x lr), on random 32px images with class-balanced labels. Evaluation: seconds for the seeded
k-means + clustering metrics, and for Recall@K + MAP@R, on 10,000 random clustered 128-d embeddings (100 classes).

    .venv/bin/python benchmarks/throughput.py
    .venv/bin/python benchmarks/throughput.py --models cnn4 resnet18:stem=cifar mobilenet_v2:width_mult=0.5

A model spec is ``arch[:option=value,...]`` (values parsed as bool, int, float, or left as text). Timings are medians
of the timed repetitions; on a shared machine they are noisy, so compare rows from one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ProxyAnchorLoss

from eatlib.metrics import cluster_metrics, retrieval_metrics
from eatlib.models import build_model

DEFAULT_MODELS = [
    "cnn4",
    "resnet18:width=16",  # params.yaml's two 32px families
    "mobilenet_v2:width_mult=0.5,max_blocks=1,last_conv=true",
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v2:width_mult=0.5",
]
STEM_CANDIDATES = [
    "resnet18:stem=imagenet",
    "resnet18:stem=halved",
    "resnet18:stem=cifar",
    "mobilenet_v2:width_mult=0.5,stem=imagenet",
    "mobilenet_v2:width_mult=0.5,stem=small",
]


def parse_value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> tuple[str, dict]:
    arch, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bad model spec {spec!r}: options are key=value, comma-separated")
        options[key] = parse_value(value)
    return arch, options


def train_throughput(spec: str, *, batch: int, image_size: int, steps: int, warmup: int, classes: int) -> float:
    """Median images/s of full training steps (forward, Proxy-Anchor, backward, AdamW)."""
    arch, options = parse_spec(spec)
    torch.manual_seed(0)
    model = build_model(arch, embedding_dim=128, image_size=image_size, **options).train()
    loss_fn = ProxyAnchorLoss(classes, 128, margin=0.1, alpha=32)
    optimizer = torch.optim.AdamW(
        [{"params": model.parameters(), "lr": 1e-3}, {"params": loss_fn.parameters(), "lr": 1e-1}]
    )
    images = torch.rand(batch, 3, image_size, image_size)
    labels = torch.arange(batch) % classes
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def clustered_embeddings(n: int, dim: int, classes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = F.normalize(torch.randn(classes, dim, generator=gen), dim=1)
    x = F.normalize(centres[labels] + 0.12 * torch.randn(n, dim, generator=gen), dim=1)
    return x, labels.numpy()


def evaluation_cost(n: int, dim: int, classes: int, repeats: int) -> dict[str, float]:
    """Median seconds for k-means + clustering metrics, and for retrieval metrics."""
    x, y = clustered_embeddings(n, dim, classes)
    cluster_s, retrieval_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = cluster_metrics(x, y, seed=0)
        cluster_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        scores.update(retrieval_metrics(x, y))
        retrieval_s.append(time.perf_counter() - start)
    return {
        "cluster_s": statistics.median(cluster_s),
        "retrieval_s": statistics.median(retrieval_s),
        "nmi": scores["nmi"],
        "recall@1": scores["recall@1"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="model specs, arch[:key=value,...]")
    parser.add_argument("--stems", action="store_true", help="also time the 32px stem candidates")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--classes", type=int, default=32, help="classes per training batch")
    parser.add_argument("--eval-n", type=int, default=10_000)
    parser.add_argument("--eval-dim", type=int, default=128)
    parser.add_argument("--eval-clusters", type=int, default=100)
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    specs = list(args.models) + ([s for s in STEM_CANDIDATES if s not in args.models] if args.stems else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.image_size}px, Proxy-Anchor + AdamW")
    print(f"{'model':58s} {'train img/s':>12s}")
    for spec in specs:
        rate = train_throughput(
            spec, batch=args.batch, image_size=args.image_size, steps=args.steps, warmup=args.warmup,
            classes=args.classes,
        )
        print(f"{spec:58s} {rate:12.0f}", flush=True)

    if not args.skip_eval:
        cost = evaluation_cost(args.eval_n, args.eval_dim, args.eval_clusters, args.eval_repeats)
        print(f"\nevaluate {args.eval_n} x {args.eval_dim}-d embeddings, {args.eval_clusters} clusters:")
        print(f"  k-means + NMI/AMI/ARI/F1/purity  {cost['cluster_s']:7.2f} s")
        print(f"  Recall@1/2/4/8 + MAP@R           {cost['retrieval_s']:7.2f} s")
        print(f"  total                            {cost['cluster_s'] + cost['retrieval_s']:7.2f} s"
              f"   (sanity: NMI {cost['nmi']:.3f}, R@1 {cost['recall@1']:.3f})")


if __name__ == "__main__":
    main()
