"""The glue the pipeline's stages (notebooks, ``eat`` CLI) call: build everything a run needs from ``Params``.

Kept apart from the loops so that a notebook, the CLI and ``torchrun`` run literally the same code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from eatlib import checkpoint, sanity
from eatlib.attacks import build_attack, eps_sweep
from eatlib.data import DataSplits, contact_sheet, load_splits, prepare_glyphs
from eatlib.defenses import INFERENCE_DEFENSES, build_inference, build_training
from eatlib.devices import resolve_device
from eatlib.evaluate import _View, attack_embeddings, embed, evaluate_robustness, subset_indices
from eatlib.layout import (  # noqa: F401 (metrics paths: for notebooks)
    metrics_path,
    model_path,
    pretrained_path,
    reading_matched_metrics_path,
    reading_matched_model_path,
    reading_metrics_path,
    reading_model_path,
)
from eatlib.metrics import embedding_metrics
from eatlib.models import Ensemble, build_model, fold_batchnorm
from eatlib.params import MATCHED, TRANSFER_SOURCES, ConfigError, Params, TrainConfig, to_dict
from eatlib.persistence import load_model
from eatlib.plots import load_history, plot_training_curves, plot_tsne, write_figures, write_training_curves_csv
from eatlib.report import load_ablation, load_metrics, stale_documents, write_tables
from eatlib.strong import evaluate_strong
from eatlib.train import fit


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(params: Params) -> DataSplits:
    data = params.data
    return load_splits(
        data.name,
        data.dataset_root(),
        image_size=data.image_size,
        seed=params.seed,
        val_fraction=data.val_fraction,
        **data.options,
    )


def prepare_data(params: Params) -> dict:
    """The data stage: prepare generated datasets, verify downloaded ones, draw a contact sheet, count."""

    started = time.perf_counter()
    data = params.data
    if data.name == "glyphs":
        prepare_glyphs(Path(data.prepared) / "glyphs.npz", image_size=data.image_size, seed=params.seed,
                       **data.options)
    splits = load_data(params)  # reading every split verifies a downloaded layout
    contact_sheet(splits.test, Path(data.prepared) / "contact_sheet.png", title=f"{data.name}: test classes")
    counts = {name: {"images": len(split), "classes": int(split.num_classes)}
              for name, split in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    summary = {"dataset": data.name, "image_size": data.image_size, "splits": counts,
               "seconds": time.perf_counter() - started}
    checkpoint.write_json(summary, Path(data.prepared) / "summary.json")
    return summary


def build_network(params: Params, arch: str):
    cfg = params.model(arch)
    return build_model(
        cfg.arch,
        embedding_dim=cfg.embedding_dim,
        image_size=params.data.image_size,
        pretrained=cfg.pretrained,
        **cfg.options,
    )


def pretrain(params: Params, arch: str, *, results: str | Path = "results", progress: bool = True,
             fit_options: dict | None = None) -> list[dict]:
    """The pretrain stage: clean Proxy-Anchor training of ``arch`` with the ``pretrain`` schedule. On glyphs it
    stands in for the paper's ImageNet weights: every defense then fine-tunes the same clean network (ensemble
    members each start from it), so no defense pays, or is judged on, escaping the loss plateau of a random
    network under attack (adversarial Proxy-Anchor training from scratch stays there for 20+ epochs)."""
    return train(params, arch, "standard", train_cfg=params.pretrain_config(), init=None,
                 out_path=pretrained_path(arch, results), run_dir=Path("runs") / "pretrain" / arch,
                 progress=progress, fit_options=fit_options)


def resolve_init(params: Params, arch: str, init: str | Path | None, results: str | Path = "results") -> Path | None:
    """The network a run starts from: "pretrained" is the pretrain stage's model of ``arch`` when ``params`` has a
    ``pretrain`` section (else None: from scratch); "none" or None is from scratch; anything else is a path."""
    if init == "pretrained":
        return pretrained_path(arch, results) if params.pretrain is not None else None
    return None if init in (None, "none") else Path(init)


def initialize_from(model: torch.nn.Module, path: str | Path) -> dict:
    """Load the network saved at ``path`` into ``model`` (into every member of an ensemble); returns what to
    record about it (path and content hash), so a resumed run can tell a changed starting point."""
    state = checkpoint.load(path)
    for member in getattr(model, "members", [model]):
        member.load_state_dict(state["state_dict"])
    return {"path": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def training_setup(params: Params, arch: str, defense: str, train_data, *, seed: int, options=None,
                   train_cfg: TrainConfig | None = None):
    """:func:`eatlib.defenses.build_training` for ``defense`` on ``arch`` as ``params`` configure it: its options
    (``defenses.<defense>`` unless given), the training loss, and how perturbations are crafted
    (``models.<arch>.craft_bf16`` and ``craft_folded``). ``train_data``: the training split (its class and image
    counts size the loss's proxies and the defenses' per-sample state)."""
    model = params.model(arch)
    return build_training(
        defense,
        options if options is not None else params.defense_options(defense),
        make_member=lambda: build_network(params, arch),
        num_classes=train_data.num_classes,
        num_samples=len(train_data),
        loss_cfg=(train_cfg or params.train).loss,
        seed=seed,
        craft_bf16=model.craft_bf16,
        craft_folded=model.craft_folded,
    )


def train(params: Params, arch: str, defense: str = "standard", *, seed: int | None = None, options=None,
          train_cfg: TrainConfig | None = None, init: str | Path | None = "pretrained",
          out_path: str | Path | None = None, run_dir: str | Path | None = None, splits: DataSplits | None = None,
          results: str | Path = "results", progress: bool = True, fit_options: dict | None = None) -> list[dict]:
    """Train ``defense`` (a training defense) on architecture family ``arch``.

    ``options`` and ``train_cfg`` default to ``defenses.<defense>`` and ``train`` of ``params`` (ablations
    override them). ``init``: "pretrained" (default) starts from the pretrain stage's model when ``params``
    has a ``pretrain`` section, else from scratch; a path starts from that saved network; None from scratch.
    ``seed`` (default: the top-level ``seed``) is the training seed: initialisation draws, batch order,
    augmentation and attack starts; the data always follow the top-level ``seed``.
    The final model goes to ``out_path`` (default ``results/models/<arch>/<defense>/seed<seed>.pt``); per-epoch
    checkpoints go to ``run_dir`` (default ``runs/<arch>/<defense>/seed<seed>``, outside the DVC outputs), keyed by the
    configuration and deleted once the model is written, so an interrupted stage resumes where it stopped and
    nothing else is resumed (:mod:`eatlib.persistence`). ``fit_options``: extra keyword arguments of
    :func:`eatlib.train.fit` (e.g. ``{"sync_bn": True}`` under torchrun).
    """

    splits = splits or load_data(params)
    device = resolve_device(params.device)
    seed = params.seed if seed is None else seed
    seed_everything(seed)
    train_cfg = train_cfg or params.train
    setup = training_setup(params, arch, defense, splits.train, seed=seed, options=options, train_cfg=train_cfg)
    meta = {"arch": arch, "model": to_dict(params.model(arch)), "data": to_dict(params.data), **setup.meta}
    init = resolve_init(params, arch, init, results)
    if init is not None:
        meta["init"] = initialize_from(setup.model, init)
    return fit(setup.model.to(device), setup.criterion.to(device), splits.train, splits.val, train_cfg,
               out_dir=run_dir or Path("runs") / arch / defense / f"seed{seed}", seed=seed, step=setup.step,
               progress=progress, meta=meta, final_path=out_path or model_path(arch, defense, results, seed),
               **(fit_options or {}))


def train_matched(params: Params, arch: str, *, seed: int | None = None, results: str | Path = "results",
                  progress: bool = True, fit_options: dict | None = None) -> list[dict]:
    """PGD-AT given EAT's compute (``pgd_at_matched``): ``defenses.pgd_at`` trained for as many forward-backward
    images as EAT's run of the same seed spent, at PGD-AT's own cost per epoch (:func:`matched_schedule`)."""
    seed = params.seed if seed is None else seed
    schedule = matched_schedule(params.train, own=training_cost(model_path(arch, "pgd_at", results, seed)),
                                target=training_cost(model_path(arch, "eat", results, seed)))
    return train(params, arch, "pgd_at", seed=seed, train_cfg=schedule,
                 out_path=model_path(arch, MATCHED, results, seed),
                 run_dir=Path("runs") / arch / MATCHED / f"seed{seed}", results=results, progress=progress,
                 fit_options=fit_options)


def evaluate_clean(params: Params, model_path: str | Path, *, splits: DataSplits | None = None) -> dict:
    """Clean clustering and retrieval scores of a saved model on the test classes."""
    splits = splits or load_data(params)
    model = load_model(model_path, resolve_device(params.device))
    started = time.perf_counter()
    embeddings, labels = embed(model, splits.test, batch_size=params.evaluation.batch_size)
    scores = embedding_metrics(embeddings, labels, seed=params.seed, ks=tuple(params.evaluation.recall_ks))
    return {"clean": scores, "test_images": len(labels), "test_classes": int(len(np.unique(labels))),
            "seconds": time.perf_counter() - started, "model": str(model_path),
            "model_meta": checkpoint.load(model_path)["meta"]}


def load_defended_model(params: Params, arch: str, defense: str, splits: DataSplits,
                        results: str | Path = "results", seed: int | None = None):
    """The deployed model of ``defense``: a trained model of training seed ``seed`` (default: the top-level
    ``seed``), or an inference defense wrapped around ``standard`` of the top-level ``seed``."""

    device = resolve_device(params.device)
    if defense not in INFERENCE_DEFENSES:
        return load_model(model_path(arch, defense, results, params.seed if seed is None else seed), device)
    base = load_model(model_path(arch, "standard", results, params.seed), device)
    references = splits.train.images if hasattr(splits.train, "images") else None
    context = {"references": references} if defense == "mixup_inference" else {}
    return build_inference(defense, base, params.defense_options(defense), **context).to(device).eval()


def training_cost(path: str | Path) -> dict:
    """Wall time and forward-backward images of a training run, from its saved history."""
    history = checkpoint.load(path)["history"]
    return {"train_seconds": float(sum(h["seconds"] for h in history)),
            "forward_backward_images": int(sum(h["forward_backward_images"] for h in history)),
            "epochs": len(history)}


def attack(params: Params, arch: str, defense: str, *, seed: int | None = None, model=None, cost: dict | None = None,
           sweep: bool | None = None, splits: DataSplits | None = None, results: str | Path = "results",
           progress: bool = True) -> dict:
    """The attack stage: clean scores, the attack suite (worst case), the eps sweep of the headline attack (main
    seed only, by default), and, for ensembles, each member alone under the headline attack; every score with its
    evaluation noise (other k-means seeds, a bootstrap over test classes). Returns the
    ``results/metrics/<arch>/<defense>/seed<seed>.json`` document. ``seed`` (default: the top-level ``seed``) is
    the training seed of the attacked model and seeds the attack starts and k-means; the attacked images are
    the same for every seed. ``model`` and ``cost`` default to that run's deployed model and training cost."""

    started = time.perf_counter()
    seed = params.seed if seed is None else seed
    splits = splits or load_data(params)
    model = model if model is not None else load_defended_model(params, arch, defense, splits, results, seed)
    cfg = params.attacks
    randomized = bool(getattr(model, "randomized", False))
    # Randomised defenses are attacked with EOT; without it their robustness is an illusion.
    specs = [{**spec, "eot": cfg.eot_samples} if randomized else spec for spec in cfg.specs()]
    headline = specs[0]
    common = {"seed": seed, "subset_seed": params.seed, "subset": cfg.subset, "batch_size": cfg.batch_size,
              "progress": progress, "amp": params.model(arch).craft_bf16,
              "noise": {"kmeans_seeds": cfg.kmeans_seeds, "bootstrap": cfg.bootstrap}}
    if cfg.protocol == "strong":
        # The headline (first, for the tables' headline column) and the strong ensemble, combined per image.
        sources = {name: None if name == defense else load_model(model_path(arch, name, results, seed),
                                                                 resolve_device(params.device))
                   for name in TRANSFER_SOURCES}
        robustness = evaluate_strong(model, splits.test, [headline, *cfg.strong], transfer_sources=sources,
                                     eot_samples=cfg.eot_samples if randomized else 1, **common)
    else:
        robustness = evaluate_robustness(model, splits.test, specs, **common)
    if cost is None:
        trained = defense if defense not in INFERENCE_DEFENSES else "standard"
        cost = training_cost(model_path(arch, trained, results, seed if trained == defense else params.seed))
    scored = {"combined": robustness.get("combined"), **robustness["attacks"]}
    document = {
        "arch": arch,
        "defense": defense,
        "seed": seed,
        "clean": robustness["clean"],
        "attacks": robustness["attacks"],
        "worst": robustness["worst"],
        "worst_attack": robustness["worst_attack"],
        "headline": headline["name"],
        "noise": {"clean": robustness["clean_noise"], "worst": scored[robustness["worst_attack"]["ami"]]["noise"]},
        "headline_noise": robustness["attacks"][headline["name"]]["noise"],
        "protocol": cfg.protocol,
        **({"combined": robustness["combined"], "hyperparameters": robustness["hyperparameters"]}
           if cfg.protocol == "strong" else {}),
        "cost": cost,
        "subset": {"images": (robustness["subset"] or {"size": len(splits.test)})["size"],
                   "classes": int(splits.test.num_classes), "seed": params.seed},
        "randomized": randomized,
        "timing": robustness["timing"],
        "config": {"model": to_dict(params.model(arch)), "attacks": to_dict(cfg),
                   "defense_options": to_dict(params.defense_options(_options_of(defense)))},
    }
    sweep = seed == params.seed if sweep is None else sweep
    if sweep and (cfg.eot_sweep or not randomized):
        # The headline's own eps is already done; attack only at the other budgets.
        sweep_specs = eps_sweep(headline, cfg.sweep_eps)
        todo = [s for s in sweep_specs if s["eps"] != headline["eps"]]
        no_noise = {**common, "noise": None}
        swept = evaluate_robustness(model, splits.test, todo, **no_noise)["attacks"] if todo else {}
        swept = {s["name"]: swept.get(s["name"]) or robustness["attacks"][headline["name"]] for s in sweep_specs}
        document["sweep"] = {"attack": headline["name"], "eps": list(cfg.sweep_eps),
                             "metrics": [_scores(swept[s["name"]]) for s in sweep_specs]}
        if cfg.protocol == "strong" and defense in SANITY_DEFENSES:
            document["sanity"] = sanity_runs(model, splits, robustness, swept, common)
    members = getattr(model, "members", None)
    if members is not None and len(members) > 1:
        document["members"] = {}
        for i, member in enumerate(members):
            alone = evaluate_robustness(member, splits.test, [headline], **common)
            entry = alone["attacks"][headline["name"]]
            document["members"][str(i)] = {"clean": alone["clean"], "headline": _scores(entry),
                                           "noise": {"clean": alone["clean_noise"], "headline": entry["noise"]}}
    document["seconds"] = time.perf_counter() - started
    return document


SANITY_DEFENSES = ("standard", "eat")       # the sanity checks of the strong protocol run on these (main seed)


def sanity_runs(model, splits: DataSplits, robustness: dict, swept: dict, common: dict) -> list[dict]:
    """The sanity checks of a strong-protocol evaluation (:mod:`eatlib.sanity`): its strongest white-box attack
    with doubled steps, the eps sweep extended to 64/255 (there pulled onto the target centre, ``push: 0``, so
    that the attacked AMI can reach chance), and uniform noise of the headline's eps."""
    headline = next(iter(robustness["attacks"].values()))["spec"]
    doubled = sanity.double_budget(robustness["attacks"][sanity.strongest_attack(robustness)]["spec"])
    far = {**headline, "name": "sanity_64_pull", "eps": 64 / 255, "alpha": 16 / 255, "push": 0.0}
    noise = {"name": "sanity_noise", "optimizer": "noise", "eps": headline["eps"], "objective": "embedding_shift"}
    quiet = {**common, "noise": None}
    extra = evaluate_robustness(model, splits.test, [doubled, far], **quiet)["attacks"]
    kmeans = robustness["clean_noise"]["kmeans"]["ami"]["values"]
    noise_kmeans = evaluate_robustness(model, splits.test, [noise], **{**common, "noise": {
        "kmeans_seeds": len(kmeans), "bootstrap": 0}})["attacks"]["sanity_noise"]["noise"]["kmeans"]["ami"]["values"]
    sweep = {"attacks": {**swept, far["name"]: extra[far["name"]]}}
    return sanity.sanity_checks(robustness, doubled=extra[doubled["name"]], sweep=sweep,
                                noise_results={"ami": noise_kmeans}, clean_ami=kmeans)


def _options_of(defense: str) -> str:
    """The defense whose ``defenses.<name>`` options a run uses (PGD-AT at EAT's compute is PGD-AT)."""
    return "pgd_at" if defense == MATCHED else defense


def _scores(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if isinstance(v, float)}


def headline_embeddings(params: Params, arch: str, defense: str, *, splits: DataSplits, images: int = 600,
                        results: str | Path = "results") -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Clean and headline-attacked embeddings of a seeded subset of the test split (for t-SNE pictures)."""

    model = fold_batchnorm(load_defended_model(params, arch, defense, splits, results))
    view = _View(splits.test, subset_indices(len(splits.test), images, params.seed))
    clean, labels = embed(model, view, batch_size=params.attacks.batch_size)
    attack = build_attack(params.attacks.specs()[0], model, clean_embeddings=clean, labels=labels, seed=params.seed,
                          amp=params.model(arch).craft_bf16)
    adversarial, _ = attack_embeddings(attack, view, batch_size=params.attacks.batch_size, progress=False)
    return clean, adversarial, labels


def report(params: Params, results: str | Path = "results", *, tsne_defenses=("standard", "eat")) -> dict:
    """The report stage: tables, figures and the stage timings, all from what the earlier stages wrote. Only the
    attack documents ``params`` makes are read (:meth:`Params.attack_runs`); any others under ``results/metrics``
    are left over from an earlier params.yaml: named in the output (``"stale"``) and printed, never tabulated."""

    started = time.perf_counter()
    results = Path(results)
    figures_dir = results / "figures"
    runs = params.attack_runs()
    stale = stale_documents(results, runs)
    if stale:
        print(f"report: left out {len(stale)} attack documents not in params.yaml (stale from an earlier run; delete "
              "them to be rid of them): " + ", ".join(map(str, stale)))
    variants = list(params.ablation.variants) if params.ablation is not None else []
    tables = write_tables(results, runs=runs, variants=variants)
    metrics = load_metrics(results, runs=runs)
    sanity_rows = {f"{run.arch} / {run.defense}": run.data for run in metrics if "sanity" in run.data}
    if sanity_rows:  # the strong protocol's sanity checks, on the main seed's standard and EAT models
        specs = next(iter(sanity_rows.values()))["hyperparameters"]["specs"]
        table = sanity.sanity_table({name: doc["sanity"] for name, doc in sanity_rows.items()}, specs)
        (results / "tables" / "sanity.md").write_text(table)
        tables.append(results / "tables" / "sanity.md")
    figures = [p for p in write_figures(results, seed=params.seed, runs=runs, variants=variants) if p.suffix == ".png"]
    figures.append(Path(shutil.copy(Path(params.data.prepared) / "contact_sheet.png", figures_dir)))
    # The verdict stage's table and forest plot, beside the others (it writes them to results/verdict/ because
    # results/tables and results/figures are this stage's outputs).
    verdict_dir = results / "verdict"
    if (verdict_dir / "verdict.md").is_file():
        shutil.copy(verdict_dir / "verdict.md", results / "tables" / "verdict.md")
    if (verdict_dir / "verdict.png").is_file():
        figures.append(Path(shutil.copy(verdict_dir / "verdict.png", figures_dir)))
    # For dvc plots: the defenses' curves (one length, train.epochs) apart from the clean pretraining runs.
    splits, training_curves, pretrain_curves = None, {}, {}
    for arch in params.pipeline.archs:
        histories = {d: load_history(model_path(arch, d, results, params.seed))
                     for d in params.pipeline.trained_defenses}
        training_curves[arch] = histories
        if pretrained_path(arch, results).exists():
            pretrain_curves[arch] = {"pretrain": load_history(pretrained_path(arch, results))}
            histories = {"pretrain (clean start)": pretrain_curves[arch]["pretrain"], **histories}
        plot_training_curves(histories, figures_dir / f"training_{arch}.png")
        figures.append(figures_dir / f"training_{arch}.png")
        for defense in tsne_defenses:
            if defense in params.pipeline.trained_defenses:
                splits = splits or load_data(params)
                clean, adversarial, labels = headline_embeddings(params, arch, defense, splits=splits,
                                                                 results=results)
                path = figures_dir / f"tsne_{arch}_{defense}.png"
                plot_tsne(clean, adversarial, labels, path, seed=params.seed,
                          title=f"{arch} / {defense} (training seed {params.seed})")
                figures.append(path)
    write_training_curves_csv(training_curves, figures_dir / "training_curves.csv")
    if pretrain_curves:
        write_training_curves_csv(pretrain_curves, figures_dir / "pretrain_curves.csv")
    timings = {"data": checkpoint.read_json(Path(params.data.prepared) / "summary.json")["seconds"]}
    for arch in params.pipeline.archs:
        if pretrained_path(arch, results).exists():
            timings[f"pretrain/{arch}"] = training_cost(pretrained_path(arch, results))["train_seconds"]
    for run in metrics:
        name = f"{run.arch}/{run.defense}/seed{run.seed}"
        if run.defense in params.pipeline.trained_defenses:
            timings[f"train/{name}"] = run.data["cost"]["train_seconds"]
        timings[f"attack/{name}"] = run.data["seconds"]
    for run in load_ablation(results, variants=variants):
        variant = run.path.stem
        if "reuses" not in run.data:  # a reused model's training is the main run's, counted above
            timings[f"ablation/{variant}/train"] = run.data["cost"]["train_seconds"]
        timings[f"ablation/{variant}/attack"] = run.data["seconds"]
    timings["report"] = time.perf_counter() - started
    timings["total"] = sum(timings.values())
    checkpoint.write_json({k: round(v, 1) for k, v in timings.items()}, results / "timings.json")
    return {"tables": tables, "figures": figures, "timings": timings, "stale": stale}


def ablation(params: Params, variant: str, *, results: str | Path = "results", progress: bool = True) -> dict:
    """One ablation variant: train it (or, for a compute-matched baseline, train until it has used the main run's
    budget of another defense) on ``ablation.arch``, then attack it with the suite (no eps sweep)."""
    arch, spec = params.ablation.arch, params.ablation.variants[variant]
    options = params.variant_options(variant)
    train_cfg = params.train
    if spec.match_compute is not None:
        train_cfg = matched_schedule(
            params.train, own=training_cost(model_path(arch, spec.defense, results, params.seed)),
            target=training_cost(model_path(arch, spec.match_compute, results, params.seed)))
    splits = load_data(params)
    main_path = model_path(arch, spec.defense, results, params.seed)
    if spec.match_compute is None and _same_training(options, params.defense_options(spec.defense)):
        # Only the inference-time aggregation differs from the main run: its members, re-aggregated.
        trained = load_model(main_path, resolve_device(params.device))
        model, cost_path = Ensemble(list(trained.members), aggregate=options.aggregate).eval(), main_path
    else:
        cost_path = Path(results) / "ablation" / "models" / f"{variant}.pt"
        train(params, arch, spec.defense, options=options, train_cfg=train_cfg, out_path=cost_path,
              run_dir=Path("runs") / "ablation" / variant, splits=splits, progress=progress)
        model = load_model(cost_path, resolve_device(params.device))
    document = attack(params, arch, spec.defense, model=model, cost=training_cost(cost_path), sweep=False,
                      splits=splits, results=results, progress=progress)
    document["variant"] = {"defense": spec.defense, **spec.options,
                           **({"match_compute": spec.match_compute} if spec.match_compute else {})}
    if cost_path == main_path:
        document["reuses"] = str(main_path)
    return document


def reading(params: Params, name: str, seed: int, *, results: str | Path = "results", progress: bool = True) -> dict:
    """One reading of EAT (``readings.variants.<name>`` over ``defenses.eat``) with training seed ``seed`` on
    ``readings.arch``: trained like the main EAT run of that seed (same pretrained start, schedule, data), then
    attacked like it (strong protocol, transfers from the same seed's standard and PGD-AT models; no eps sweep).
    Returns its document, for ``results/readings/metrics/<arch>/<name>/seed<k>.json``."""
    params.check_readings()
    arch = params.readings.arch
    options = params.reading_options(name)
    splits = load_data(params)
    path = reading_model_path(arch, name, results, seed)
    train(params, arch, "eat", seed=seed, options=options, out_path=path,
          run_dir=Path("runs") / "readings" / arch / name / f"seed{seed}", splits=splits, results=results,
          progress=progress)
    model = load_model(path, resolve_device(params.device))
    document = attack(params, arch, "eat", seed=seed, model=model, cost=training_cost(path), sweep=False,
                      splits=splits, results=results, progress=progress)
    document["reading"] = {"name": name, "overrides": params.readings.variants[name]}
    document["config"]["defense_options"] = to_dict(options)
    return document


def reading_matched(params: Params, name: str, seed: int, *, results: str | Path = "results",
                    progress: bool = True) -> dict:
    """PGD-AT given reading ``name``'s compute: ``defenses.pgd_at`` with training seed ``seed`` on
    ``readings.arch``, trained for as many forward-backward images as that reading's run of the seed spent (at
    PGD-AT's own cost per epoch, as ``pgd_at_matched`` is for the default EAT), then attacked like
    ``pgd_at_matched``. Returns its document, for ``results/readings/metrics/<arch>/<name>/pgd_at_matched/
    seed<k>.json``."""
    params.check_readings()
    arch = params.readings.arch
    if name not in params.readings.matched:
        raise ConfigError(f"readings.matched: {name!r} is not listed {params.readings.matched}; add it there")
    schedule = matched_schedule(params.train, own=training_cost(model_path(arch, "pgd_at", results, seed)),
                                target=training_cost(reading_model_path(arch, name, results, seed)))
    splits = load_data(params)
    path = reading_matched_model_path(arch, name, results, seed)
    train(params, arch, "pgd_at", seed=seed, train_cfg=schedule, out_path=path,
          run_dir=Path("runs") / "readings" / arch / name / MATCHED / f"seed{seed}", splits=splits,
          results=results, progress=progress)
    model = load_model(path, resolve_device(params.device))
    document = attack(params, arch, MATCHED, seed=seed, model=model, cost=training_cost(path), sweep=False,
                      splits=splits, results=results, progress=progress)
    document["matched_to"] = {"reading": name, "epochs": schedule.epochs,
                              "lr_milestones": list(schedule.lr_milestones)}
    return document


def _same_training(options, main_options) -> bool:
    """True when ``options`` train exactly what ``main_options`` trained: they differ at most in ``aggregate``,
    which EAT's training reads only when its adversarial examples are crafted on the whole ensemble (other
    ensembles, e.g. adversarial ADP, craft them on the aggregate: never reused)."""
    if not hasattr(options, "transfer") or options.transfer == "ensemble":
        return False
    return dataclasses.replace(options, aggregate=main_options.aggregate) == main_options


def matched_schedule(cfg: TrainConfig, *, own: dict, target: dict) -> TrainConfig:
    """``cfg`` stretched to spend ``target``'s forward-backward images at ``own``'s cost per epoch (milestones
    scale with the epochs, so the schedule keeps its shape)."""
    per_epoch = own["forward_backward_images"] / own["epochs"]
    epochs = max(1, round(target["forward_backward_images"] / per_epoch))
    scale = epochs / cfg.epochs
    milestones = sorted({min(epochs, max(1, round(m * scale))) for m in cfg.lr_milestones})
    return dataclasses.replace(cfg, epochs=epochs, lr_milestones=milestones,
                               warmup_epochs=cfg.warmup_epochs * scale)
