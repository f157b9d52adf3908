"""The paper's tables (Markdown, LaTeX, CSV) from the pipeline's results JSON.

Reads ``results/metrics/<arch>/<defense>/seed<k>.json`` (the main table: one document per training seed, see
:mod:`eatlib.layout`) and ``results/ablation/<variant>.json`` (the ablation table, one seed); the schema is in the
team brief ("Results files"). A table is a :class:`pandas.DataFrame`:

- main table: index = row labels (defenses in :data:`CANONICAL_DEFENSES` order, each ensemble followed by its
  members alone as ``"eat (member 1)"``, ...), columns = MultiIndex ``(arch, group, key)`` with groups
  ``clean`` / ``robust`` (the headline attack) / ``worst`` (minimum over the attack suite) / ``cost`` / ``run``.
  Every value is the mean over the row's seeds; ``(arch, "run", "seeds")`` counts them, and the keys of
  :data:`SD_COLUMNS` have a companion ``<key>_sd`` column (the standard deviation over seeds, NaN for one seed)
  that Markdown and LaTeX show as ``mean ± sd``;
- ablation table: index = variant names (file stems), columns = MultiIndex ``(group, key)`` with the group
  ``variant`` holding the defense, the architecture and the variant's parameter values.

Values are the unrounded numbers from the JSON (CSV keeps them; Markdown and LaTeX round them). The caption, which
states the headline attack, its eps and the test subset, travels in ``table.attrs["caption"]``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from eatlib.atomic import write_atomic
from eatlib.layout import seed_of
from eatlib.params import format_eps

CANONICAL_DEFENSES = (
    "standard", "input_transform", "randomization", "bart", "mixup_inference",
    "pgd_at", "pgd_at_matched", "trades", "iat", "adp", "eat",
)
# How Markdown, LaTeX and figure legends name a defense whose file name does not say what it is.
DEFENSE_LABELS = {"pgd_at_matched": "PGD-AT (EAT's compute)"}
MAIN_METRICS = ("nmi", "ami", "ari", "f1", "recall@1")   # clean and robust columns of the main table
WORST_METRICS = ("ami", "ari")                           # worst case over the attack suite
ABLATION_METRICS = ("ami", "ari", "recall@1")
COST_KEYS = ("train_minutes", "fb_images_millions")
SD_COLUMNS = (("clean", "ami"), ("clean", "ari"), ("worst", "ami"), ("worst", "ari"))  # shown as mean ± sd
SD_SUFFIX = "_sd"
REQUIRED_KEYS = ("arch", "defense", "clean", "attacks", "worst", "headline", "cost", "subset")

DISPLAY_NAMES = {
    "nmi": "NMI", "ami": "AMI", "ari": "ARI", "f1": "F1", "purity": "purity", "recall@1": "R@1",
    "worst": "worst case", "train_minutes": "minutes", "fb_images_millions": "FB img (M)",
}
_UNLABELLED_GROUPS = ("variant", "cost", "run")   # headers of these groups are the key alone
_MEMBER_LABEL = re.compile(r" \(member \d+\)$")


class ResultsError(ValueError):
    """A results file that is missing, unreadable or lacks a key the tables need."""


@dataclass(frozen=True)
class RunResult:
    """One results JSON file: ``data`` is the parsed file, ``path`` where it came from (for error messages),
    ``seed`` the training seed (from the file name ``seed<k>.json``, else the document's ``seed``; None if
    neither says)."""

    path: Path
    data: dict
    seed: int | None = None

    @property
    def arch(self) -> str:
        return str(self.data["arch"])

    @property
    def defense(self) -> str:
        return str(self.data["defense"])

    def get(self, *keys: str):
        """``data[k1][k2]...``; a missing key is a :class:`ResultsError` naming this file and the dotted key."""
        value = self.data
        for depth, key in enumerate(keys):
            if not isinstance(value, dict) or key not in value:
                dotted = ".".join(keys[: depth + 1])
                raise ResultsError(
                    f"{self.path}: missing key '{dotted}'. The results schema is in the team brief (Results "
                    "files); re-run the pipeline stage that writes this file (dvc repro)."
                )
            value = value[key]
        return value


# ----------------------------------------------------------------------------------------------------------- loading

def _read_run(path: Path, seed: int | None = None) -> RunResult:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ResultsError(f"{path}: cannot read it as JSON ({error}); delete it and re-run its stage") from error
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
    if "seed" in data:
        if isinstance(data["seed"], bool) or not isinstance(data["seed"], int):
            raise ResultsError(f"{path}: 'seed' must be an integer (the training seed), found {data['seed']!r}")
        if seed is not None and data["seed"] != seed:
            raise ResultsError(f"{path}: the document says seed {data['seed']} but the file is named for seed "
                               f"{seed}; re-run the attack stage that writes it")
        seed = data["seed"]
    run = RunResult(path, data, seed)
    for key in REQUIRED_KEYS:
        run.get(key)
    headline = run.get("headline")
    run.get("attacks", headline)  # the headline attack must be in the suite
    for key in ("train_seconds", "forward_backward_images"):
        run.get("cost", key)
    for key in ("images", "classes", "seed"):
        run.get("subset", key)
    return run


def run_key(path: str | Path) -> tuple[str, str, int] | None:
    """The ``(arch, defense, training seed)`` an attack document's path names (``.../<arch>/<defense>/seed<k>.json``),
    or None when the file is not named ``seed<k>.json``. Read from the path alone, never from the file."""
    path = Path(path)
    seed = seed_of(path)
    return None if seed is None else (path.parent.parent.name, path.parent.name, seed)


def stale_documents(results_dir: str | Path, runs: Collection[tuple[str, str, int]]) -> list[Path]:
    """The attack documents ``<results_dir>/metrics/<arch>/<defense>/seed<k>.json`` whose (arch, defense, seed) is
    not in ``runs`` (:meth:`eatlib.params.Params.attack_runs`), sorted: left over from an earlier params.yaml (fewer
    seeds, a defense removed), since DVC does not delete the outputs of stages that no longer exist. The loaders
    leave them out when given ``runs``; delete them to be rid of them."""
    runs = set(runs)
    return [path for path in sorted((Path(results_dir) / "metrics").glob("*/*/*.json"))
            if (key := run_key(path)) is not None and key not in runs]


def _left_out(stale: list[Path]) -> str:
    return f" ({len(stale)} left out, not made by the current params: {', '.join(map(str, stale))})" if stale else ""


def load_metrics(results_dir: str | Path = "results", *,
                 runs: Collection[tuple[str, str, int]] | None = None) -> list[RunResult]:
    """Every ``<results_dir>/metrics/<arch>/<defense>/seed<k>.json``, validated, in (arch, defense, seed) order;
    each run's ``seed`` is set. ``runs``: the (arch, defense, seed) to read (:meth:`eatlib.params.Params.attack_runs`);
    documents outside it are stale (:func:`stale_documents`) and left out unread. Raises :class:`ResultsError` if
    there is none, if a file of the old one-seed layout (``<arch>/<defense>.json``) is left, or if a document's
    arch, defense or seed disagrees with its path."""
    folder = Path(results_dir) / "metrics"
    stale = sorted(folder.glob("*/*.json"))
    if stale:
        raise ResultsError(
            f"{stale[0]}: a file of the old one-seed layout; attack documents now live at "
            f"{folder}/<arch>/<defense>/seed<k>.json. Move it to {stale[0].with_suffix('')}/seed<k>.json (k = the "
            "seed it was trained with, params `seed`) or delete it and re-run its stage (dvc repro)"
        )
    paths = sorted(folder.glob("*/*/*.json"))
    left_out = stale_documents(results_dir, runs) if runs is not None else []
    paths = sorted(set(paths) - set(left_out))
    if not paths:
        raise ResultsError(
            f"no metrics files in {folder}/<arch>/<defense>/seed<k>.json{_left_out(left_out)}; run the attack stages "
            "first (dvc repro)"
        )
    runs = []
    for path in paths:
        seed = seed_of(path)
        if seed is None:
            raise ResultsError(f"{path}: expected a file named seed<k>.json (k = the training seed) in {path.parent}")
        run = _read_run(path, seed)
        if (run.arch, run.defense) != (path.parent.parent.name, path.parent.name):
            raise ResultsError(f"{path}: the document is {run.arch}/{run.defense} but its folder says "
                               f"{path.parent.parent.name}/{path.parent.name}; re-run the attack stage that writes it")
        runs.append(run)
    return sorted(runs, key=lambda run: (run.arch, run.defense, run.seed))


def group_seeds(runs: list[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    """``{(arch, defense): [run of each seed, in seed order]}``; two runs of one (arch, defense, seed) are an
    error."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for run in runs:
        group = groups.setdefault((run.arch, run.defense), [])
        clash = next((other for other in group if other.seed == run.seed), None)
        if clash is not None:
            raise ResultsError(f"{run.path} and {clash.path} both hold {run.arch}/{run.defense} seed {run.seed}")
        group.append(run)
    return {key: sorted(group, key=lambda run: (run.seed is None, run.seed or 0)) for key, group in groups.items()}


def load_seed_runs(results_dir: str | Path = "results", *, runs: Collection[tuple[str, str, int]] | None = None
                   ) -> dict[tuple[str, str], list[RunResult]]:
    """:func:`group_seeds` of :func:`load_metrics` (``runs`` goes to it): per (arch, defense), the documents of
    every seed."""
    return group_seeds(load_metrics(results_dir, runs=runs))


def runs_of_seed(runs: list[RunResult], seed: int) -> list[RunResult]:
    """The runs of one training seed (the main seed, params ``seed``, for the eps sweep and t-SNE): inference and
    single-seed defenses have their one document there."""
    return [run for run in runs if run.seed == seed]


def load_ablation(results_dir: str | Path = "results", *, variants: Collection[str] | None = None) -> list[RunResult]:
    """Every ``<results_dir>/ablation/<variant>.json`` (each also needs a ``variant`` object); may be empty.
    ``variants`` (the names of ``ablation.variants``): only those are read, so a variant removed from params.yaml
    leaves no stale row."""
    paths = sorted((Path(results_dir) / "ablation").glob("*.json"))
    runs = [_read_run(path) for path in paths if variants is None or path.stem in variants]
    for run in runs:
        if not isinstance(run.get("variant"), dict):
            raise ResultsError(f"{run.path}: 'variant' must be an object of parameter values, e.g. {{\"members\": 5}}")
    return runs


def defense_label(defense: str) -> str:
    """How tables and legends name ``defense`` (:data:`DEFENSE_LABELS`, else its name)."""
    return DEFENSE_LABELS.get(defense, defense)


def row_label(label: str) -> str:
    """A main-table row label for display: the defense through :func:`defense_label`, a member suffix kept."""
    match = _MEMBER_LABEL.search(label)
    stem = label[: match.start()] if match else label
    return defense_label(stem) + (match[0] if match else "")


def defense_order(defenses) -> list[str]:
    """Canonical order (:data:`CANONICAL_DEFENSES`) first, then any other defenses alphabetically."""
    defenses = set(defenses)
    known = [d for d in CANONICAL_DEFENSES if d in defenses]
    return known + sorted(defenses - set(CANONICAL_DEFENSES))


def is_member_row(label: str) -> bool:
    """Whether a main-table row label is one ensemble member alone (``"eat (member 2)"``)."""
    return bool(_MEMBER_LABEL.search(label))


# ------------------------------------------------------------------------------------------------------------ tables

def _metrics(run: RunResult, keys: tuple, *path: str) -> dict[str, float]:
    return {key: float(run.get(*path, key)) for key in keys}


def _cost(run: RunResult, *path: str) -> dict[str, float]:
    return {
        "train_minutes": float(run.get(*path, "cost", "train_seconds")) / 60,
        "fb_images_millions": float(run.get(*path, "cost", "forward_backward_images")) / 1e6,
    }


def _member_rows(run: RunResult) -> dict[str, dict[tuple, float]]:
    """Rows for each member alone. A member entry holds ``clean`` and its scores under the headline attack, as
    ``headline`` (a metrics object) or as ``attacks.<headline id>``; ``worst`` and ``cost`` are optional."""
    members = run.data.get("members") or {}
    if not isinstance(members, dict):
        raise ResultsError(f"{run.path}: 'members' must be an object keyed by member index (\"0\", \"1\", ...)")
    headline = run.get("headline")
    rows = {}
    for index in sorted(members, key=lambda k: (0, int(k), "") if str(k).isdigit() else (1, 0, str(k))):
        entry = members[index]
        base = ("members", str(index))
        robust_path = (*base, "attacks", headline) if "attacks" in entry else (*base, "headline")
        row = {("clean", k): v for k, v in _metrics(run, MAIN_METRICS, *base, "clean").items()}
        row |= {("robust", k): v for k, v in _metrics(run, MAIN_METRICS, *robust_path).items()}
        worst = entry.get("worst") or {}
        row |= {("worst", k): float(worst[k]) if k in worst else math.nan for k in WORST_METRICS}
        cost = _cost(run, *base) if "cost" in entry else dict.fromkeys(COST_KEYS, math.nan)
        row |= {("cost", k): v for k, v in cost.items()}
        label = f"{run.defense} (member {int(index) + 1})" if str(index).isdigit() else f"{run.defense} ({index})"
        rows[label] = row
    return rows


def _run_row(run: RunResult) -> dict[tuple, float]:
    headline = run.get("headline")
    row = {("clean", k): v for k, v in _metrics(run, MAIN_METRICS, "clean").items()}
    row |= {("robust", k): v for k, v in _metrics(run, MAIN_METRICS, "attacks", headline).items()}
    row |= {("worst", k): v for k, v in _metrics(run, WORST_METRICS, "worst").items()}
    row |= {("cost", k): v for k, v in _cost(run).items()}
    return row


def _mean_over_seeds(rows: list[dict[tuple, float]]) -> dict[tuple, float]:
    """Mean of each key over the seeds' rows, the sd over seeds of :data:`SD_COLUMNS` (NaN for one seed), and the
    number of seeds as ``("run", "seeds")``."""
    frame = pd.DataFrame([{key: float(value) for key, value in row.items()} for row in rows])
    means, sds = frame.mean(), frame.std(ddof=1)
    out = {key: float(means[key]) for key in frame.columns}
    out |= {(group, key + SD_SUFFIX): float(sds[(group, key)]) for group, key in SD_COLUMNS if (group, key) in out}
    out[("run", "seeds")] = float(len(rows))
    return out


def _group_columns(group: str, keys: tuple) -> list[tuple[str, str]]:
    """A group's columns, each key of :data:`SD_COLUMNS` followed by its sd companion."""
    columns = []
    for key in keys:
        columns.append((group, key))
        if (group, key) in SD_COLUMNS:
            columns.append((group, key + SD_SUFFIX))
    return columns


def describe_attack(run: RunResult, attack_id: str | None = None, *, eot: bool = True) -> str:
    """``"pgd20_centroid (eps=8/255, norm=linf, steps=20)"`` from the attack's ``spec`` (the headline by default)."""
    attack_id = attack_id or run.get("headline")
    spec = run.get("attacks", attack_id, "spec")
    parts = [f"eps={format_eps(run.get('attacks', attack_id, 'spec', 'eps'))}"]
    keys = ("norm", "target", "steps", "restarts", "eot") if eot else ("norm", "target", "steps", "restarts")
    parts += [f"{key}={spec[key]}" for key in keys if key in spec]
    return f"{attack_id} ({', '.join(parts)})"


def _describe_subset(run: RunResult) -> str:
    subset = run.get("subset")
    return f"{subset['images']} test images of {subset['classes']} classes (seed {subset['seed']})"


def _one_or_many(values: list[str], what: str) -> str:
    unique = list(dict.fromkeys(values))
    return unique[0] if len(unique) == 1 else f"({what} differ between runs: " + "; ".join(unique) + ")"


def _eot_note(runs: list[RunResult]) -> str:
    """How randomised defenses were attacked: the same attacks with gradients averaged over random draws."""
    draws = sorted({run.get("attacks", run.get("headline"), "spec").get("eot", 1) for run in runs
                    if run.data.get("randomized")})
    return f" (with EOT over {', '.join(map(str, draws))} draws against randomised defenses)" if draws else ""


def _seeds_note(runs: list[RunResult]) -> str:
    seeds = sorted({run.seed for run in runs if run.seed is not None})
    listed = f" ({', '.join(map(str, seeds))})" if seeds else ""
    return (f"Each row is the mean over its training seeds{listed}, counted in the column seeds; clean and "
            "worst-case AMI and ARI carry ± the standard deviation over seeds (none with one seed). ")


def _caption(runs: list[RunResult], title: str, *, seeds: bool = False) -> str:
    attacks = _one_or_many([describe_attack(run, eot=False) for run in runs], "headline attacks") + _eot_note(runs)
    subsets = _one_or_many([_describe_subset(run) for run in runs], "test subsets")
    suite_sizes = sorted({len(run.get("attacks")) for run in runs})
    suite = f"{suite_sizes[0]} attacks" if len(suite_sizes) == 1 else "each run's attack suite"
    return (
        f"{title}. Clustering inference (k-means, k = number of test classes) on {subsets}. "
        + (_seeds_note(runs) if seeds else "")
        + f"Robust: under the headline attack {attacks}, against the deployed model. "
        f"Worst case: per-metric minimum over the suite of {suite}. "
        "Cost: training wall time (minutes) and forward-backward images (millions)."
    )


def main_table(runs: list[RunResult]) -> pd.DataFrame:
    """Rows = defenses (canonical order; ensemble members alone under their ensemble), columns =
    ``(arch, group, key)``: the mean over each (arch, defense)'s seeds, sd companions for :data:`SD_COLUMNS` and
    the number of seeds (see the module docstring). A defense missing for one architecture has NaN there."""
    if not runs:
        raise ResultsError("no results to tabulate; run the attack stages first (dvc repro)")
    groups = group_seeds(runs)
    archs = sorted({run.arch for run in runs})
    rows: dict[str, dict] = {}
    for defense in defense_order(run.defense for run in runs):
        rows[defense] = {}
        members: dict[str, dict] = {}
        for arch in archs:
            seed_runs = groups.get((arch, defense))
            if not seed_runs:
                continue
            rows[defense] |= {(arch, *key): v for key, v in _mean_over_seeds([_run_row(r) for r in seed_runs]).items()}
            per_member: dict[str, list[dict]] = {}
            for run in seed_runs:
                for label, row in _member_rows(run).items():
                    per_member.setdefault(label, []).append(row)
            for label, member_rows in per_member.items():
                members.setdefault(label, {}).update(
                    {(arch, *key): value for key, value in _mean_over_seeds(member_rows).items()})
        rows.update(members)
    layout = [("clean", MAIN_METRICS), ("robust", MAIN_METRICS), ("worst", WORST_METRICS), ("cost", COST_KEYS),
              ("run", ("seeds",))]
    columns = pd.MultiIndex.from_tuples(
        [(arch, *column) for arch in archs for group, keys in layout for column in _group_columns(group, keys)],
        names=["arch", "group", "key"],
    )
    table = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns).astype(float)
    table.index.name = "defense"
    table.attrs["caption"] = _caption(runs, "Clean and robust clustering and retrieval scores per defense",
                                      seeds=True)
    table.attrs["label"] = "tab:main"
    return table


def ablation_table(runs: list[RunResult]) -> pd.DataFrame:
    """Rows = ablation variants (file stems), columns = ``(group, key)``: the variant's defense, arch and parameter
    values, then clean / robust / worst-case scores and cost."""
    if not runs:
        raise ResultsError("no ablation results to tabulate; run the ablation stages first (dvc repro)")
    # A variant's "defense" (and "arch") already have their own columns.
    params = list(dict.fromkeys(key for run in runs for key in run.get("variant") if key not in ("defense", "arch")))
    rows = {}
    for run in runs:
        variant = run.get("variant")
        row: dict[tuple, object] = {("variant", "defense"): run.defense, ("variant", "arch"): run.arch}
        row |= {("variant", key): variant.get(key) for key in params}
        headline = run.get("headline")
        row |= {("clean", k): v for k, v in _metrics(run, ABLATION_METRICS, "clean").items()}
        row |= {("robust", k): v for k, v in _metrics(run, ABLATION_METRICS, "attacks", headline).items()}
        row |= {("worst", k): v for k, v in _metrics(run, WORST_METRICS, "worst").items()}
        row |= {("cost", k): v for k, v in _cost(run).items()}
        rows[run.path.stem] = row
    columns = (
        [("variant", "defense"), ("variant", "arch")] + [("variant", key) for key in params]
        + [("clean", k) for k in ABLATION_METRICS] + [("robust", k) for k in ABLATION_METRICS]
        + [("worst", k) for k in WORST_METRICS] + [("cost", k) for k in COST_KEYS]
    )
    table = pd.DataFrame.from_dict(rows, orient="index")
    table = table.reindex(columns=pd.MultiIndex.from_tuples(columns, names=["group", "key"]))
    table.index.name = "variant"
    table.attrs["caption"] = _caption(runs, "Ablation of EAT's open design choices")
    table.attrs["label"] = "tab:ablation"
    return table


# ----------------------------------------------------------------------------------------------------------- formats

def _format_value(value, column: tuple) -> str:
    """Scores to 3 decimals, minutes to 1, millions of images to 2; parameter values as written."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, str) or column[-2] == "variant":
        return f"{value:g}" if isinstance(value, float | np.floating) else str(value)
    if column[-1] == "seeds":
        return str(int(value))
    decimals = {"train_minutes": 1, "fb_images_millions": 2}.get(column[-1], 3)
    return f"{float(value):.{decimals}f}"


def _is_sd(column: tuple) -> bool:
    return str(column[-1]).endswith(SD_SUFFIX)


def shown_columns(table: pd.DataFrame) -> list[tuple]:
    """The columns Markdown and LaTeX show: all but the sd companions (they join their mean's cell)."""
    return [column for column in table.columns if not _is_sd(column)]


def _cell_text(values: pd.Series, column: tuple) -> str:
    """A cell's text: the value, with `` ± sd`` where the column has an sd companion that is a number."""
    text = _format_value(values[column], column)
    sd = values.get((*column[:-1], f"{column[-1]}{SD_SUFFIX}"))
    if sd is not None and not (isinstance(sd, float | np.floating) and math.isnan(sd)) and text != "–":
        text += f" ± {_format_value(sd, column)}"
    return text


def _best_cells(table: pd.DataFrame) -> set[tuple]:
    """(row, column) cells holding the column's best score among defense rows (members and cost excluded)."""
    best = set()
    rows = [label for label in table.index if not is_member_row(str(label))]
    for column in table.columns:
        if column[-2] not in ("clean", "robust", "worst") or _is_sd(column):
            continue
        values = pd.to_numeric(table.loc[rows, column], errors="coerce")
        if values.notna().sum() < 2:
            continue
        top = _format_value(float(values.max()), column)
        best |= {(row, column) for row in rows if _format_value(float(values[row]), column) == top}
    return best


def _header(column: tuple) -> str:
    """Flat header text of a (group, key) column: ``"clean NMI"``, ``"members"`` for variant parameters."""
    group, key = column[-2:]
    name = DISPLAY_NAMES.get(key, key)
    return name if group in _UNLABELLED_GROUPS else f"{DISPLAY_NAMES.get(group, group)} {name}"


def _markdown_block(table: pd.DataFrame, best: set[tuple], bold: bool) -> list[str]:
    shown = shown_columns(table)
    header = [table.index.name or ""] + [_header(column) for column in shown]
    numeric = [pd.api.types.is_numeric_dtype(table[column]) for column in shown]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for label, values in table.iterrows():
        label = str(label)
        cells = [f"&emsp;{row_label(label)}" if is_member_row(label) else row_label(label)]
        for column in shown:
            text = _cell_text(values, column).replace("|", "\\|")
            cells.append(f"**{text}**" if bold and (label, column) in best else text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_table(table: pd.DataFrame, *, bold_best: bool = True) -> str:
    """A caption line, then a pipe table; a three-level (main) table gets one pipe table per architecture.
    ``bold_best`` bolds each score column's best defense (members excluded)."""
    best = _best_cells(table)
    lines = [f"*{table.attrs.get('caption', '')}*", ""]
    if table.columns.nlevels == 3:
        for arch in dict.fromkeys(table.columns.get_level_values(0)):
            part = table[arch]
            part = part.loc[part.notna().any(axis=1)]
            part_best = {(row, column[1:]) for row, column in best if column[0] == arch}
            lines += [f"**{arch}**", "", *_markdown_block(part, part_best, bold_best), ""]
    else:
        lines += [*_markdown_block(table, best, bold_best), ""]
    return "\n".join(lines)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "ε": r"$\varepsilon$", "–": "--", "±": r"$\pm$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (underscores included) in plain text."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))


def _spans(values: list) -> list[tuple[object, int, int]]:
    """Runs of equal consecutive values: (value, first index, last index)."""
    spans = []
    for i, value in enumerate(values):
        if spans and spans[-1][0] == value:
            spans[-1] = (value, spans[-1][1], i)
        else:
            spans.append((value, i, i))
    return spans


def latex_table(table: pd.DataFrame, *, bold_best: bool = True) -> str:
    """A booktabs ``table*`` (needs only the booktabs and multirow packages): one header row per column level,
    grouped with ``\\multicolumn`` and ``\\cmidrule``; members indented; best score per column in bold."""
    best = _best_cells(table) if bold_best else set()
    shown = shown_columns(table)
    levels = table.columns.nlevels
    n = len(shown)
    lines = [
        r"\begin{table*}[t]", r"\centering", r"\scriptsize", r"\setlength{\tabcolsep}{3pt}",
        rf"\caption{{{latex_escape(table.attrs.get('caption', ''))}}}",
        rf"\label{{{table.attrs.get('label', 'tab:results')}}}",
        r"\begin{tabular}{l" + "r" * n + "}", r"\toprule",
    ]
    for level in range(levels):
        values = [column[level] for column in shown]
        first = rf"\multirow{{{levels}}}{{*}}{{{latex_escape(table.index.name or '')}}}" if level == 0 else ""
        cells, rules = [first], []
        if level == levels - 1:
            cells += [latex_escape(DISPLAY_NAMES.get(v, v)) for v in values]
        else:
            # A group spans the columns below it only where the higher levels agree too.
            keys = [tuple(column[: level + 1]) for column in shown]
            for key, start, end in _spans(keys):
                name = latex_escape(DISPLAY_NAMES.get(key[-1], key[-1]))
                cells.append(rf"\multicolumn{{{end - start + 1}}}{{c}}{{{name}}}" if end > start else name)
                rules.append(rf"\cmidrule(lr){{{start + 2}-{end + 2}}}")
        lines.append(" & ".join(cells) + r" \\")
        if rules:
            lines.append(" ".join(rules))
    lines.append(r"\midrule")
    for label, values in table.iterrows():
        label = str(label)
        cells = [(r"\quad " if is_member_row(label) else "") + latex_escape(row_label(label))]
        for column in shown:
            text = latex_escape(_cell_text(values, column))
            cells.append(rf"\textbf{{{text}}}" if (label, column) in best else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table*}", ""]
    return "\n".join(lines)


def csv_table(table: pd.DataFrame) -> str:
    """CSV with flat ``arch.group.key`` (main) or ``group.key`` (ablation) headers and unrounded values;
    :func:`read_csv_table` restores the MultiIndex."""
    flat = table.copy()
    flat.columns = [".".join(map(str, column)) for column in table.columns]
    return flat.to_csv(lineterminator="\n")  # default float format: shortest repr, exact round trip


def read_csv_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`csv_table` back into its MultiIndex form."""
    flat = pd.read_csv(path, index_col=0)
    levels = {len(str(name).split(".", 2)) for name in flat.columns}
    depth = 3 if levels == {3} else 2
    flat.columns = pd.MultiIndex.from_tuples([tuple(str(n).split(".", depth - 1)) for n in flat.columns])
    return flat


# ------------------------------------------------------------------------------------------------------------ writing

def write_table(table: pd.DataFrame, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``<name>.md``, ``<name>.tex`` and ``<name>.csv`` into ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    return [
        write_atomic(out_dir / f"{name}.md", markdown_table(table)),
        write_atomic(out_dir / f"{name}.tex", latex_table(table)),
        write_atomic(out_dir / f"{name}.csv", csv_table(table)),
    ]


def write_tables(results_dir: str | Path = "results", out_dir: str | Path | None = None, *,
                 runs: Collection[tuple[str, str, int]] | None = None,
                 variants: Collection[str] | None = None) -> list[Path]:
    """Write ``main.{md,tex,csv}`` (from ``results_dir/metrics``; ``runs`` goes to :func:`load_metrics`) and, if
    ``results_dir/ablation`` holds variants (of ``variants``, when given), ``ablation.{md,tex,csv}`` into
    ``out_dir`` (default ``results_dir/tables``). Returns the written paths."""
    out_dir = Path(out_dir) if out_dir is not None else Path(results_dir) / "tables"
    written = write_table(main_table(load_metrics(results_dir, runs=runs)), out_dir, "main")
    ablation = load_ablation(results_dir, variants=variants)
    if ablation:
        written += write_table(ablation_table(ablation), out_dir, "ablation")
    return written
