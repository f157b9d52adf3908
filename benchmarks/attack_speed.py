"""Attack speed: our PGD against torchattacks' PGD on the same work, and the headline attack per backbone.

1. Same network, same work: a cosine-similarity-to-proxies classifier head on an embedding network (logits =
   scale * z . normalised proxies), cross-entropy on those logits, PGD L-inf 8/255, step 2/255, the same steps
   and batch. torchattacks attacks the classifier; we attack the embedding network with that cross-entropy as
   the objective. Ours runs with its defaults (channels-last iterates) and with the contiguous layout
   torchattacks uses (same arithmetic, layout aside). The runs are timed back to back in rotating order, so
   that load on a shared machine hits all alike; the median over repeats of the time ratio ours / theirs is
   printed; ours must not be slower than 1.1x.
2. The fused ``centroid`` objective (one dot product per sample) against an unfused one (all squared distances
   to the K centres, then a gather), to show whether the objective's form matters next to the network.
3. Adversarial images/s of the headline attack (PGD-20 L-inf, centroid) per backbone at 32px (params.yaml's two
   families, stock cnn4, resnet18, mobilenet_v2) and for a 3-member cnn4 Ensemble, on the network as trained
   and on its BatchNorm-folded copy (``fold_batchnorm``, what ``evaluate_robustness`` attacks); random weights
   (the cost does not depend on them).

    .venv/bin/python benchmarks/attack_speed.py [--batch 128] [--steps 20] [--repeats 5] [--threads N]
        [--backbone-batch 250] [--backbone-repeats 2] [--archs cnn4 resnet18:width=16 ... ensemble]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from throughput import parse_spec  # benchmarks/throughput.py, beside this script
from torch import nn

from eatlib.attacks import HEADLINE, PGD, Centroid, Objective, build_attack

ARCHS = ["resnet18:width=16", "mobilenet_v2:width_mult=0.5,max_blocks=1,last_conv=true",  # params.yaml's two
         "cnn4", "resnet18", "mobilenet_v2", "ensemble"]


class ProxyClassifier(nn.Module):
    """Logits ``[B, C] = scale * z . p_hat`` from an embedding network and fixed proxies (what torchattacks
    needs: a model that returns logits)."""

    def __init__(self, net: nn.Module, proxies: torch.Tensor, scale: float = 16.0):
        super().__init__()
        self.net, self.scale = net, scale
        self.register_buffer("proxies", F.normalize(proxies, dim=1))

    def forward(self, x):
        return self.scale * self.net(x) @ self.proxies.T


class ProxyCrossEntropy(Objective):
    """The same cross-entropy as an engine objective: value ``CE(scale * z . p_hat, label)`` per sample."""

    name = "proxy_cross_entropy"

    def __init__(self, proxies: torch.Tensor, labels: torch.Tensor, scale: float = 16.0):
        super().__init__()
        self.scale = scale
        self._state = {"clean": torch.empty(len(labels), 0), "proxies": F.normalize(proxies, dim=1),
                       "labels": labels}

    def _bind(self, state, index):
        proxies, labels, scale = state["proxies"], state["labels"][index], self.scale
        return lambda z: F.cross_entropy(scale * z @ proxies.T, labels, reduction="none")


class UnfusedCentroid(Centroid):
    """``centroid`` computed the direct way: squared distances to all K centres, then gather own and target."""

    def _bind(self, state, index):
        centres, own, target = state["centres"], state["assignment"][index], state["target"][index]
        rows = torch.arange(len(index), device=index.device)

        def value(z):
            d = z.pow(2).sum(1, keepdim=True) - 2 * z @ centres.T + centres.pow(2).sum(1)
            return d[rows, own] - d[rows, target]

        return value


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def compare_with_torchattacks(net, images, args) -> float:
    """Returns the median time ratio ours (default settings) / torchattacks."""
    import torchattacks

    torch.manual_seed(0)
    classes = 100
    proxies = torch.randn(classes, net.embedding_dim)
    labels = torch.randint(0, classes, (len(images),))
    classifier = ProxyClassifier(net, proxies).eval()
    theirs = torchattacks.PGD(classifier, eps=8 / 255, alpha=2 / 255, steps=args.steps, random_start=True)
    objective = ProxyCrossEntropy(proxies, labels)
    ours = PGD(net, objective, eps=8 / 255, alpha=2 / 255, steps=args.steps)
    ours_contiguous = PGD(net, objective, eps=8 / 255, alpha=2 / 255, steps=args.steps, channels_last=False)
    index = torch.arange(len(images))
    runs = {"ours": lambda: ours(images, index), "ours, contiguous layout": lambda: ours_contiguous(images, index),
            "torchattacks": lambda: theirs(images, labels)}
    # Same work check: all raise the cross-entropy by the same amount.
    adversarial = {name: run() for name, run in runs.items()}  # torchattacks needs grad mode on
    with torch.no_grad():
        ce = {name: F.cross_entropy(classifier(x), labels).item() for name, x in adversarial.items()}
        clean = F.cross_entropy(classifier(images), labels).item()
    print(f"  cross-entropy: clean {clean:.3f} | " + " | ".join(f"{n} {v:.3f}" for n, v in ce.items()))
    times = {name: [] for name in runs}
    names = list(runs)
    for repeat in range(args.repeats):
        # Rotate the order, so a load change on a shared machine does not always hit the same one.
        for name in names[repeat % 3 :] + names[: repeat % 3]:
            times[name] += timed(runs[name], 1)
    n = len(images)
    ratios = {}
    for name in names[:2]:
        pairs = [a / b for a, b in zip(times[name], times["torchattacks"], strict=True)]
        ratios[name] = statistics.median(pairs)
        print(f"  {name:24s} {n / statistics.median(times[name]):7.1f} adv img/s | time ratio to torchattacks "
              f"(median over back-to-back runs): {ratios[name]:.3f}  [{', '.join(f'{r:.2f}' for r in pairs)}]")
    print(f"  {'torchattacks':24s} {n / statistics.median(times['torchattacks']):7.1f} adv img/s")
    return ratios["ours"]


def fused_vs_unfused(net, images, args) -> None:
    with torch.no_grad():
        clean = torch.cat([net(images), net(images.flip(3))])
    labels = torch.arange(len(clean)) % 100
    index = torch.arange(len(images))
    fused = Centroid("nearest").prepare(clean, labels)
    unfused = UnfusedCentroid("nearest").prepare(clean, labels)
    z = clean[: len(images)]
    torch.testing.assert_close(fused(z, index), unfused(z, index), atol=1e-4, rtol=0)
    f_fused, f_unfused = fused.batch(index), unfused.batch(index)
    calls = 200
    per = {}
    for name, f in (("fused", f_fused), ("unfused", f_unfused)):
        zz = z.clone().requires_grad_(True)
        seconds = min(timed(lambda f=f, zz=zz: [torch.autograd.grad(f(zz).sum(), zz) for _ in range(calls)], 3))
        per[name] = seconds / calls * 1e6
    print(f"  objective value+grad per step, batch {len(images)}, K=100, D={z.shape[1]}: fused {per['fused']:.0f} us"
          f" | unfused {per['unfused']:.0f} us")
    attacks = {name: PGD(net, obj, eps=8 / 255, alpha=2 / 255, steps=args.steps)
               for name, obj in (("fused", fused), ("unfused", unfused))}
    rates = {name: [] for name in attacks}
    for _ in range(args.repeats):
        for name, attack in attacks.items():
            rates[name].append(len(images) / timed(lambda a=attack: a(images, index), 1)[0])
    summary = " | ".join(f"{name} {max(r):.1f} adv img/s" for name, r in rates.items())
    print(f"  whole PGD-{args.steps}: {summary}", flush=True)


def headline_rate(model, images, args) -> float:
    with torch.no_grad():
        clean = torch.cat([model(images), model(images.flip(3))])
    labels = torch.arange(len(clean)) % 50
    attack = build_attack({**HEADLINE, "steps": args.steps}, model, clean_embeddings=clean, labels=labels)
    index = torch.arange(len(images))
    attack(images[:8], index[:8])  # warm-up
    return len(images) / min(timed(lambda: attack(images, index), args.backbone_repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--backbone-batch", type=int, default=250,
                        help="batch for the per-backbone rates (default: params.yaml's attacks.batch_size)")
    parser.add_argument("--backbone-repeats", type=int, default=2)
    parser.add_argument("--archs", nargs="*", default=ARCHS,
                        help="model specs arch[:key=value,...] for part 3 ('ensemble': 3 x cnn4; none: skip)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from eatlib.models import Ensemble, build_model, fold_batchnorm

    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, 32, 32)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, PGD-{args.steps}")
    net = build_model("cnn4", embedding_dim=128, image_size=32).eval()
    print("1. ours vs torchattacks.PGD, cnn4, cross-entropy on proxy logits", flush=True)
    ratio = compare_with_torchattacks(net, images, args)
    print("2. centroid objective, fused vs unfused, cnn4", flush=True)
    fused_vs_unfused(net, images, args)
    if args.archs:
        print(f"3. headline attack (PGD-{args.steps} L-inf 8/255, step 2/255, centroid), adversarial images/s at "
              f"32px, batch {args.backbone_batch}, best of {args.backbone_repeats}: as trained | BatchNorm folded",
              flush=True)
        batch = torch.rand(args.backbone_batch, 3, 32, 32)
        for spec in args.archs:
            if spec == "ensemble":
                model = Ensemble([build_model("cnn4", embedding_dim=128, image_size=32) for _ in range(3)])
                spec = "3 x cnn4 ensemble"
            else:
                arch, options = parse_spec(spec)
                model = build_model(arch, embedding_dim=128, image_size=32, **options)
            plain = headline_rate(model.eval(), batch, args)
            folded = headline_rate(fold_batchnorm(model), batch, args)
            print(f"  {spec:58s} {plain:7.1f} | {folded:7.1f}  ({folded / plain:.2f}x)", flush=True)
    verdict = "OK" if ratio <= 1.1 else "SLOWER THAN ALLOWED"
    print(f"ours / torchattacks time ratio {ratio:.3f} (must be <= 1.1): {verdict}", flush=True)


if __name__ == "__main__":
    main()
