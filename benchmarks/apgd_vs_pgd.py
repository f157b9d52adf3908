"""APGD against PGD at equal forward-backward passes: the objective reached and the AMI after clustering.

For each model (the pipeline's trained standard and EAT models, ``results/models/<arch>/<defense>/seed<k>.pt``)
and each objective (``margin``, ``centroid`` with random targets, ``multi_target``), both optimisers run with
the same number of forward-backward passes per image (``--steps``; PGD with its suite step ``eps / 4``, APGD
with its own schedule) on a seeded subset of the test split; printed: the mean objective value the attack
reached on the attacked model and the AMI of a fresh k-means on the adversarial embeddings. APGD should reach
at least PGD's objective at every budget (Croce & Hein 2020: it does not need its step size tuned).

Without trained checkpoints, ``--tiny`` trains a small cnn4 on glyphs for a few seconds and uses it as the
standard model (no EAT then). Not a timing measurement: the passes are equal by construction.

    .venv/bin/python benchmarks/apgd_vs_pgd.py [--params params.yaml] [--arch resnet] [--seed 0]
        [--defenses standard eat] [--subset 500] [--steps 10 20 50] [--eps 8/255] [--tiny] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from eatlib.attacks import build_attack
from eatlib.evaluate import _View, embed, embedding_scores, model_device, subset_indices
from eatlib.layout import model_path
from eatlib.load import load_params
from eatlib.models import fold_batchnorm
from eatlib.params import parse_eps
from eatlib.persistence import load_model
from eatlib.pipeline import load_data

OBJECTIVES = {"margin": {"objective": "margin"}, "centroid_random": {"objective": "centroid", "target": "random"},
              "multi_target": {"objective": "multi_target", "targets": 3}}


@torch.no_grad()
def _score(model, attack, view, clean, batch_size, seed):
    """Mean objective reached (on the attacked model) and the AMI of the adversarial embeddings."""
    device = model_device(model)
    values, chunks = [], []
    for images, index in view.batches(batch_size, device):
        adversarial = attack(images, index)
        embeddings = model(adversarial).float()
        values.append(attack.objective.batch(index, device)(embeddings).cpu())
        chunks.append(embeddings.cpu())
    scores = embedding_scores(torch.cat(chunks), view.labels, seed=seed, clean=clean)
    return float(torch.cat(values).mean()), scores["ami"]


def compare(model, dataset, *, steps, eps, subset, seed, batch_size) -> list[dict]:
    """Rows ``{objective, passes, pgd_value, apgd_value, pgd_ami, apgd_ami}`` for ``model`` on ``dataset``."""
    model = fold_batchnorm(model.eval())
    view = _View(dataset, subset_indices(len(dataset), subset, seed))
    clean, labels = embed(model, view, batch_size=batch_size)
    rows = []
    for name, objective in OBJECTIVES.items():
        for n in steps:
            row = {"objective": name, "passes": n * objective.get("targets", 1)}
            for optimizer in ("pgd", "apgd"):
                # multi_target: each optimiser runs once per target, n passes each; equal passes either way.
                spec = {"optimizer": optimizer, "eps": eps, "steps": n, **objective}
                attack = build_attack(spec, model, clean_embeddings=clean, labels=labels, seed=seed)
                row[f"{optimizer}_value"], row[f"{optimizer}_ami"] = _score(model, attack, view, clean, batch_size,
                                                                            seed)
            rows.append(row)
    return rows


def _tiny_model():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny_trained import trained  # tests/tiny_trained.py: the tests' small trained model

    model, _, test = trained(classes=30, per_class=16)
    return model, test


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--arch", default="resnet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--defenses", nargs="+", default=["standard", "eat"])
    parser.add_argument("--subset", type=int, default=500)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--tiny", action="store_true", help="no checkpoints: a small cnn4 trained on the fly")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    eps = parse_eps(args.eps)
    models = {}
    if args.tiny:
        model, test = _tiny_model()
        models["standard (tiny cnn4)"] = model
    else:
        test = load_data(load_params(args.params)).test
        for defense in args.defenses:
            path = model_path(args.arch, defense, seed=args.seed)
            if not path.exists():
                print(f"{defense}: no checkpoint at {path} (run the train stage, or pass --tiny)")
                continue
            models[defense] = load_model(path, "auto")
    print(f"APGD vs PGD at equal forward-backward passes, L-inf eps {args.eps}, seed {args.seed}, "
          f"{min(args.subset, len(test))} test images; objective (higher = stronger) and AMI (lower = stronger)")
    print(f"{'model':<22} {'objective':<16} {'passes':>6} {'PGD obj':>9} {'APGD obj':>9} {'PGD AMI':>8} "
          f"{'APGD AMI':>8}")
    for name, model in models.items():
        for row in compare(model, test, steps=args.steps, eps=eps, subset=args.subset, seed=args.seed,
                           batch_size=args.batch):
            print(f"{name:<22} {row['objective']:<16} {row['passes']:>6} {row['pgd_value']:>9.4f} "
                  f"{row['apgd_value']:>9.4f} {row['pgd_ami']:>8.3f} {row['apgd_ami']:>8.3f}")


if __name__ == "__main__":
    main()
