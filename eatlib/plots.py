"""The paper's figures from the results JSON (and from embeddings / training histories), plus the eps-curve CSV.

Every function builds a :class:`matplotlib.figure.Figure` directly (no pyplot state, so nothing leaks between
calls and notebooks keep their own backend), returns it, and, given ``out_path``, saves it as a PNG at
:data:`DPI` through a temporary file and a rename. Figures have a fixed pixel size (``figsize * DPI``, no tight
bounding box), constrained layout, seaborn's colour-blind palette, and one fixed colour and marker per defense
across all figures. The eps sweep and the training curves are of the main training seed (params ``seed``) only:
the attack stage sweeps eps there, and one seed's curves are what a reader can follow.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullLocator

from eatlib.layout import model_path
from eatlib.params import parse_eps
from eatlib.report import (
    CANONICAL_DEFENSES,
    DISPLAY_NAMES,
    ResultsError,
    RunResult,
    defense_label,
    defense_order,
    group_seeds,
    load_ablation,
    load_metrics,
    runs_of_seed,
    write_atomic,
)

DPI = 150
CURVE_METRICS = ("nmi", "ami", "ari", "f1", "recall@1")
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "*")
_EXTRA_MARKERS = ("h", "p", "d", "8", "H")   # defenses outside CANONICAL_DEFENSES: dashed, other markers
# A defense that is another one at a different budget: its colour, dashed, its own marker.
_VARIANT_OF = {"pgd_at_matched": ("pgd_at", "p")}
_COLOURED = tuple(d for d in CANONICAL_DEFENSES if d not in _VARIANT_OF)   # ten defenses, ten palette colours
_STYLE = {"axes.titleweight": "bold", "legend.frameon": False, "savefig.dpi": DPI}


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _themed(function):
    """Draw inside seaborn's whitegrid/notebook theme without changing the caller's global rcParams."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9), mpl.rc_context(_STYLE):
            return function(*args, **kwargs)
    return wrapper


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Save ``figure`` as a PNG at :data:`DPI` (exact ``figsize * DPI`` pixels), atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return write_atomic(path, buffer.getvalue())


def defense_styles(defenses: Sequence[str]) -> dict[str, dict]:
    """A fixed colour, marker and line style per defense: canonical defenses keep theirs whatever else is shown;
    ``eat`` gets a thicker line so the method of the paper stands out."""
    palette = sns.color_palette("colorblind", 10)
    styles, extra = {}, 0
    for defense in defense_order(defenses):
        if defense in _VARIANT_OF:
            base, marker = _VARIANT_OF[defense]
            index, dashes = _COLOURED.index(base), "--"
        elif defense in _COLOURED:
            index, marker, dashes = _COLOURED.index(defense), _MARKERS[_COLOURED.index(defense)], "-"
        else:
            index, marker, dashes = extra, _EXTRA_MARKERS[extra % len(_EXTRA_MARKERS)], "--"
            extra += 1
        styles[defense] = {"color": palette[index % 10], "marker": marker,
                           "linestyle": dashes, "linewidth": 2.6 if defense == "eat" else 1.6,
                           "zorder": 3 if defense == "eat" else 2}
    return styles


def _label(key: str) -> str:
    return DISPLAY_NAMES.get(key, key)


# ------------------------------------------------------------------------------------------------------ eps curves

def _sweep_rows(run: RunResult, metrics: Sequence[str], include_clean: bool) -> list[dict]:
    sweep = run.data.get("sweep")
    if not sweep:
        return []
    eps, scores = run.get("sweep", "eps"), run.get("sweep", "metrics")
    if len(eps) != len(scores):
        raise ResultsError(f"{run.path}: 'sweep.eps' has {len(eps)} values but 'sweep.metrics' has {len(scores)}")
    try:
        eps = [parse_eps(value) for value in eps]
    except ValueError as error:
        raise ResultsError(f"{run.path}: 'sweep.eps': {error}") from error
    points = [(0.0, run.get("clean"), "clean")] if include_clean and 0 not in eps else []
    points += [(e, s, f"sweep.metrics[{i}]") for i, (e, s) in enumerate(zip(eps, scores, strict=True))]
    rows = []
    for value_eps, values, where in points:
        for metric in metrics:
            if metric not in values:
                raise ResultsError(f"{run.path}: missing key '{where}.{metric}' (needed for the eps curves)")
            rows.append({"defense": run.defense, "arch": run.arch, "eps": value_eps, "metric": metric,
                         "value": float(values[metric])})
    return rows


def eps_curves(runs: Sequence[RunResult], *, metrics: Sequence[str] = CURVE_METRICS,
               include_clean: bool = True) -> pd.DataFrame:
    """Tidy robustness-vs-eps data: one row per (defense, arch, eps, metric) with its ``value``, from each run's
    ``sweep`` (runs without one are skipped). ``include_clean`` adds eps = 0 from the clean scores. Pass one seed's
    runs (:func:`eatlib.report.runs_of_seed`): two sweeps of one (arch, defense) are an error."""
    for (arch, defense), group in group_seeds(runs).items():
        swept = [run for run in group if run.data.get("sweep")]
        if len(swept) > 1:
            raise ResultsError(f"{arch}/{defense}: {len(swept)} seeds have a sweep ({swept[0].path}, {swept[1].path}); "
                               "pass one seed's runs (eatlib.report.runs_of_seed(runs, params seed))")
    rows = [row for run in runs for row in _sweep_rows(run, metrics, include_clean)]
    if not rows:
        raise ResultsError("no results file has a 'sweep'; the attack stage writes it (params: attack sweep)")
    frame = pd.DataFrame(rows, columns=["defense", "arch", "eps", "metric", "value"])
    order = {d: i for i, d in enumerate(defense_order(frame["defense"].unique()))}
    frame = frame.sort_values(["arch", "defense", "metric", "eps"], key=lambda c: c.map(order) if c.name ==
                              "defense" else c, kind="stable")
    return frame.reset_index(drop=True)


def eps_curves_wide(curves: pd.DataFrame) -> pd.DataFrame:
    """:func:`eps_curves` pivoted to one row per eps and one column per ``<arch>/<metric>/<defense>``: the layout
    DVC's line template draws as one line per column (``y: {file: [resnet/ari/standard, resnet/ari/eat]}``)."""
    wide = curves.assign(series=curves["arch"] + "/" + curves["metric"] + "/" + curves["defense"])
    # Columns grouped by arch, then metric, then defense (the order eps_curves gives its defenses).
    rank = {d: i for i, d in enumerate(dict.fromkeys(curves["defense"]))}
    keys = wide.drop_duplicates("series").sort_values(["arch", "metric", "defense"], kind="stable",
                                                       key=lambda c: c.map(rank) if c.name == "defense" else c)
    order = list(keys["series"])
    wide = wide.pivot_table(index="eps", columns="series", values="value", aggfunc="first")
    return wide[order].reset_index().rename_axis(columns=None)


def write_eps_curves_csv(results_dir: str | Path, path: str | Path, *, seed: int, wide: bool = False,
                         runs: Collection[tuple[str, str, int]] | None = None, **options) -> Path:
    """Write :func:`eps_curves` of ``results_dir/metrics`` at training seed ``seed`` (the main seed, params
    ``seed``) as CSV: tidy (columns defense, arch, eps, metric, value), or with ``wide`` as
    :func:`eps_curves_wide` for ``dvc plots``. ``runs`` goes to :func:`eatlib.report.load_metrics` (the current
    params' runs: stale documents left out); ``options`` go to :func:`eps_curves`."""
    frame = eps_curves(runs_of_seed(load_metrics(results_dir, runs=runs), seed), **options)
    frame = eps_curves_wide(frame) if wide else frame
    return write_atomic(path, frame.to_csv(index=False, lineterminator="\n"))


def _headline_eps(runs: Sequence[RunResult]) -> float | None:
    values = set()
    for run in runs:
        eps = run.get("attacks", run.get("headline"), "spec").get("eps")
        try:
            values.add(parse_eps(eps))
        except (TypeError, ValueError):
            continue   # no usable eps recorded: the plot just omits the headline marker
    return values.pop() if len(values) == 1 else None


def _sweep_is_l2(runs: Sequence[RunResult]) -> bool:
    for run in runs:
        sweep = run.data.get("sweep") or {}
        spec = run.data.get("attacks", {}).get(sweep.get("attack"), {}).get("spec", {})
        if str(spec.get("norm", "linf")).lower() in ("l2", "2"):
            return True
    return False


@_themed
def plot_robustness_curves(runs: Sequence[RunResult], out_path: str | Path | None = None, *,
                           metrics: Sequence[str] = ("ami", "ari"), seed: int | None = None) -> Figure:
    """Score against eps, one panel per (metric row, architecture column), one line per defense; eps = 0 is the
    clean score, the dotted line marks the headline eps. ``seed`` (the runs' training seed) goes in the title."""
    data = eps_curves(runs, metrics=metrics)
    archs = sorted(data["arch"].unique())
    styles = defense_styles(data["defense"].unique())
    l2 = _sweep_is_l2(runs)
    scale = 1.0 if l2 else 255.0
    figure = _new_figure(3.6 * len(archs) + 1.9, 2.9 * len(metrics))
    axes = figure.subplots(len(metrics), len(archs), sharex=True, sharey="row", squeeze=False)
    headline = _headline_eps(runs)
    for row, metric in enumerate(metrics):
        for col, arch in enumerate(archs):
            ax = axes[row, col]
            part = data[(data["arch"] == arch) & (data["metric"] == metric)]
            for defense, style in styles.items():
                curve = part[part["defense"] == defense]
                if len(curve):
                    ax.plot(curve["eps"] * scale, curve["value"], label=defense_label(defense), markersize=5,
                            **style)
            if headline is not None:
                ax.axvline(headline * scale, color="0.4", linestyle=":", linewidth=1.2, zorder=1)
            # eps sweeps are roughly geometric (1, 2, 4, 8, 16 /255): symlog spreads them evenly and keeps 0 (clean).
            ax.set_xscale("symlog", base=2, linthresh=1.0 if not l2 else 0.1, linscale=0.5)
            ticks = sorted(part["eps"].unique() * scale)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_title(arch if row == 0 else "")
            ax.set_ylabel(_label(metric) if col == 0 else "")
            if row == len(metrics) - 1:
                ax.set_xlabel("ε (L2)" if l2 else "ε (L∞, in 1/255)")
    # Proxy handles in defense order, so a defense missing from some panel still has its legend entry.
    entries = {defense_label(defense): Line2D([], [], markersize=5, **style) for defense, style in styles.items()}
    if headline is not None:
        entries["headline ε"] = Line2D([], [], color="0.4", linestyle=":", linewidth=1.2)
    figure.legend(entries.values(), entries.keys(), loc="outside right upper", title="defense")
    if seed is not None:
        figure.suptitle(f"training seed {seed} (the main seed)", fontsize="medium")
    if out_path is not None:
        save_figure(figure, out_path)
    return figure


# ------------------------------------------------------------------------------------------------ training curves

def load_history(model_path: str | Path) -> list[dict]:
    """The per-epoch ``history`` stored in a model checkpoint written by ``eatlib.train`` (``save_model``/``fit``)."""
    from eatlib import checkpoint  # imports torch; only this function needs it

    state = checkpoint.load(model_path)
    if not isinstance(state, dict) or "history" not in state:
        raise ResultsError(f"{model_path}: missing key 'history'; it is written by eatlib.train.fit at the end")
    return list(state["history"])


def load_histories(archs: Sequence[str], defenses: Sequence[str], results: str | Path = "results", *,
                   seed: int) -> dict[str, dict[str, list[dict]]]:
    """``{arch: {defense: history}}`` of the models trained at ``seed`` (the main seed, params ``seed``), read from
    :func:`eatlib.layout.model_path`: what :func:`write_training_curves_csv` and :func:`plot_training_curves`
    take (per arch)."""
    return {arch: {defense: load_history(model_path(arch, defense, results, seed)) for defense in defenses}
            for arch in archs}


@_themed
def plot_training_curves(histories: Mapping[str, Sequence[Mapping]], out_path: str | Path | None = None, *,
                         keys: Sequence[str] = ("loss", "val_nmi", "val_recall@1")) -> Figure:
    """Per-epoch training loss and validation scores of several runs (``{"resnet / eat": history, ...}``; a history
    is a list of records with ``epoch`` and the ``keys``), one panel per key, one line per run."""
    if not histories:
        raise ValueError("no histories to plot; pass {run label: history list}")
    keys = [key for key in keys if any(key in record for history in histories.values() for record in history)]
    if not keys:
        raise ValueError("the histories hold none of the keys to plot (loss, val_nmi, val_recall@1)")
    names = {"loss": "training loss", "val_nmi": "validation NMI", "val_ami": "validation AMI",
             "val_recall@1": "validation R@1"}
    palette = sns.color_palette("colorblind", max(len(histories), 1))
    figure = _new_figure(3.5 * len(keys) + 2.2, 3.2)
    axes = figure.subplots(1, len(keys), sharex=True, squeeze=False)[0]
    for (label, history), color, marker in zip(histories.items(), palette * 10, _MARKERS * 10, strict=False):
        for ax, key in zip(axes, keys, strict=True):
            points = [(record["epoch"], record[key]) for record in history if key in record]
            if points:
                epochs, values = zip(*points, strict=True)
                ax.plot(epochs, values, color=color, marker=marker, markersize=3.5, linewidth=1.5,
                        markevery=max(1, len(epochs) // 12), label=label)
    for ax, key in zip(axes, keys, strict=True):
        ax.set_title(names.get(key, key))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", title="run")
    if out_path is not None:
        save_figure(figure, out_path)
    return figure


TRAINING_CSV_KEYS = ("loss", "val_nmi", "val_recall@1")


def training_curves_wide(histories: Mapping[str, Mapping[str, Sequence[Mapping]]], *,
                         keys: Sequence[str] = TRAINING_CSV_KEYS) -> pd.DataFrame:
    """Per-epoch training records of every run as one table for ``dvc plots``: one row per epoch, one column per
    ``<arch>/<key>/<run>`` (``histories`` = ``{arch: {run label: history}}``). Runs of different lengths leave
    empty cells, which the plots skip; a key no record of a run holds gets no column."""
    columns: dict[str, dict[int, float]] = {}
    for arch, runs in histories.items():
        for key in keys:
            for run, history in runs.items():
                points = {int(record["epoch"]): float(record[key]) for record in history if key in record}
                if points:
                    columns[f"{arch}/{key}/{run}"] = points
    if not columns:
        raise ValueError(f"the histories hold none of the keys {', '.join(keys)}; pass {{arch: {{run: history}}}}")
    frame = pd.DataFrame(columns).sort_index()
    return frame.rename_axis("epoch").reset_index()


def write_training_curves_csv(histories: Mapping[str, Mapping[str, Sequence[Mapping]]], path: str | Path,
                              **options) -> Path:
    """Write :func:`training_curves_wide` as CSV (``options`` go to it)."""
    frame = training_curves_wide(histories, **options)
    return write_atomic(path, frame.to_csv(index=False, lineterminator="\n"))


# ------------------------------------------------------------------------------------------------------------ t-SNE

def _class_palette(n_classes: int) -> list:
    if n_classes <= 10:
        return sns.color_palette("colorblind", n_classes)
    # Many classes cannot all be told apart by colour; a shuffled hue wheel keeps neighbouring labels distinct.
    colors = sns.color_palette("husl", n_classes)
    order = np.random.default_rng(0).permutation(n_classes)
    return [colors[i] for i in order]


@_themed
def plot_tsne(clean, adversarial, labels, out_path: str | Path | None = None, *, seed: int = 0,
              max_points: int = 1000, max_iter: int = 1000, title: str | None = None,
              adversarial_title: str = "adversarial") -> Figure:
    """t-SNE of clean and adversarial test embeddings, side by side, coloured by class.

    ``clean`` and ``adversarial``: [N, D] arrays (or CPU tensors), row i of ``adversarial`` is the attacked version
    of row i of ``clean``; ``labels``: [N] ints. Both sets are embedded by *one* seeded
    :class:`sklearn.manifold.TSNE` fit, so the two panels share coordinates and show where the attack moved each
    point. At most ``max_points`` pairs are drawn (a seeded subsample): t-SNE takes about 30 s for 1000 pairs on
    two CPU cores. ``max_iter`` is t-SNE's number of optimisation steps (at least 250).
    """
    from sklearn.manifold import TSNE

    clean, adversarial = np.asarray(clean, dtype=np.float32), np.asarray(adversarial, dtype=np.float32)
    labels = np.asarray(labels)
    if clean.ndim != 2 or clean.shape != adversarial.shape or labels.shape != (len(clean),):
        raise ValueError(f"expected clean and adversarial [N, D] of one shape and labels [N]; got {clean.shape}, "
                         f"{adversarial.shape} and {labels.shape}")
    if len(clean) < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {len(clean)}")
    keep = np.sort(np.random.default_rng(seed).permutation(len(clean))[:max_points])
    clean, adversarial, labels = clean[keep], adversarial[keep], labels[keep]
    n = len(clean)
    tsne = TSNE(n_components=2, perplexity=min(30.0, (2 * n - 1) / 3), init="pca", learning_rate="auto",
                max_iter=max_iter, random_state=seed)
    points = tsne.fit_transform(np.concatenate([clean, adversarial]))
    classes = np.unique(labels)
    colors = dict(zip(classes, _class_palette(len(classes)), strict=True))
    point_colors = np.array([colors[label] for label in labels])
    figure = _new_figure(9.0, 4.6)
    axes = figure.subplots(1, 2, sharex=True, sharey=True)
    size = float(np.clip(4000 / n, 4, 30))
    for ax, part, name in ((axes[0], points[:n], "clean"), (axes[1], points[n:], adversarial_title)):
        ax.scatter(part[:, 0], part[:, 1], c=point_colors, s=size, linewidths=0, alpha=0.85)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="box")
    note = f"{n} test images, {len(classes)} classes (colour = class), one shared t-SNE map"
    figure.suptitle(f"{title}\n{note}" if title else note, fontsize="medium")
    if len(classes) <= 10:
        handles = [Line2D([], [], marker="o", linestyle="", color=colors[c], label=str(c))
                   for c in classes]
        figure.legend(handles=handles, loc="outside right upper", title="class")
    if out_path is not None:
        save_figure(figure, out_path)
    return figure


# --------------------------------------------------------------------------------------------------------- ablation

@_themed
def plot_ablation(runs: Sequence[RunResult], out_path: str | Path | None = None, *,
                  metrics: Sequence[str] = ("ami", "ari")) -> Figure:
    """Horizontal bars per ablation variant: robust (headline attack) score, over a lighter bar for the clean
    score, with the worst case over the attack suite as a black tick; one panel per metric."""
    if not runs:
        raise ResultsError("no ablation results to plot; run the ablation stages first (dvc repro)")
    names = [run.path.stem for run in runs]
    y = np.arange(len(runs))
    styles = defense_styles({run.defense for run in runs})
    colors = [styles[run.defense]["color"] for run in runs]   # e.g. a compute-matched pgd_at row stands apart
    figure = _new_figure(3.4 * len(metrics) + 2.4, 0.45 * len(runs) + 1.7)
    axes = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        clean = [float(run.get("clean", metric)) for run in runs]
        robust = [float(run.get("attacks", run.get("headline"), metric)) for run in runs]
        worst = [float(run.get("worst", metric)) for run in runs]
        ax.barh(y, clean, height=0.75, color=colors, alpha=0.35)
        ax.barh(y, robust, height=0.45, color=colors)
        ax.scatter(worst, y, marker="|", s=260, linewidths=2.2, color="black", zorder=3)
        ax.set_title(_label(metric))
        ax.set_xlim(0, max(1.0, max(clean + robust) * 1.05))
        ax.grid(axis="y", visible=False)
    figure.get_layout_engine().set(wspace=0.06)   # keeps "1.0" and "0.0" of neighbouring panels apart
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    handles = [Patch(color="0.45", alpha=0.35, label="clean"), Patch(color="0.45", label="robust (headline attack)"),
               Line2D([], [], marker="|", markersize=14, markeredgewidth=2.2, linestyle="", color="black",
                      label="worst case (attack suite)")]
    if len(styles) > 1:
        handles += [Patch(color=style["color"], label=defense_label(defense)) for defense, style in styles.items()]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5))
    if out_path is not None:
        save_figure(figure, out_path)
    return figure


# ------------------------------------------------------------------------------------------------------ everything

def write_figures(results_dir: str | Path = "results", out_dir: str | Path | None = None, *,
                  seed: int, runs: Collection[tuple[str, str, int]] | None = None,
                  variants: Collection[str] | None = None) -> list[Path]:
    """The figures that need only results JSON, into ``out_dir`` (default ``results_dir/figures``):
    ``robustness_eps.png``, ``eps_curves.csv`` (tidy) and ``eps_curves_wide.csv`` (for ``dvc plots``), all from
    the metrics sweeps of training seed ``seed`` (the main seed, params ``seed``), and ``ablation.png`` when
    ``results_dir/ablation`` holds variants. ``runs`` goes to :func:`eatlib.report.load_metrics` (the current
    params' runs: stale documents left out). t-SNE and training curves need embeddings / checkpoints: see
    :func:`plot_tsne`, :func:`plot_training_curves`, :func:`load_histories`."""
    out_dir = Path(out_dir) if out_dir is not None else Path(results_dir) / "figures"
    documents = runs_of_seed(load_metrics(results_dir, runs=runs), seed)
    if not documents:
        raise ResultsError(f"no metrics documents of training seed {seed} in {Path(results_dir) / 'metrics'}; the eps "
                           "sweep is run at the main seed (params `seed`): pass that seed, or run its attack stages")
    curves = eps_curves(documents)
    written = [
        write_atomic(out_dir / "eps_curves.csv", curves.to_csv(index=False, lineterminator="\n")),
        write_atomic(out_dir / "eps_curves_wide.csv", eps_curves_wide(curves).to_csv(index=False, lineterminator="\n")),
    ]
    plot_robustness_curves(documents, out_dir / "robustness_eps.png", seed=seed)
    written.append(out_dir / "robustness_eps.png")
    ablation = load_ablation(results_dir, variants=variants)
    if ablation:
        plot_ablation(ablation, out_dir / "ablation.png")
        written.append(out_dir / "ablation.png")
    return written
