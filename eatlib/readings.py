"""Every reading of EAT against the comparison set: the verdict's paired differences, one block per reading.

A reading (``readings.variants.<name>`` in params.yaml) is EAT with some of ``defenses.eat`` read differently:
another self-transfer rule, split scheme, ensemble size, a gradient-diversity weight. Each is trained with the
training seeds ``readings.seeds`` on ``readings.arch`` and attacked like the main runs, so the comparisons of
:mod:`eatlib.verdict` apply unchanged with the reading in EAT's place (:data:`READING_COMPARISONS`), paired by seed
with the main run's models. The default EAT is one more rival: does this reading differ from ``defenses.eat``?

Compute is not equal across readings (``others`` costs more per batch than ``each_member``, ``momentum`` the same):
every reading reports its forward-backward images relative to the default EAT's and PGD-AT's, seed by seed, and
"vs PGD-AT at EAT's compute" is PGD-AT at the *default* EAT's budget, so it is equal compute only where that ratio
is 1.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np

from eatlib.atomic import write_atomic
from eatlib.layout import reading_metrics_path
from eatlib.report import ResultsError
from eatlib.verdict import RESOLVE, Comparison, compare_method, index_documents, load_documents, markdown_table

READING_COMPARISONS = (
    Comparison("vs_pgd_at", "pgd_at", "worst", "vs PGD-AT (equal epochs)"),
    Comparison("vs_eat", "eat", "worst", "vs EAT of defenses.eat (equal epochs)"),
    Comparison("vs_pgd_at_matched", "pgd_at_matched", "worst", "vs PGD-AT at default EAT's compute"),
    Comparison("vs_best_member", "best_member", "headline", "vs its best member (headline attack)"),
    Comparison("clean_vs_standard", "standard", "clean", "vs standard (clean)"),
)
BUDGET_RIVALS = ("eat", "pgd_at")   # whose forward-backward images each reading's budget is given relative to

CAPTION = (
    "**Readings of EAT.** Each reading (`readings.variants`) in EAT's place, paired by training seed with the "
    "main run's models: reading minus rival (positive: the reading is better), worst case of the attack protocol "
    "(clean for *vs standard*, headline attack for *vs its best member*). Intervals and reading rule as in the "
    f"verdict table: *ahead* / *behind* only when both 95% intervals clear 0; seeds for ±{RESOLVE} as there. "
    "*vs PGD-AT at default EAT's compute* is equal compute only where the reading's budget ratio to EAT is 1."
)


def load_readings(results_dir: str | Path, arch: str, names: Iterable[str], seeds: Iterable[int]) -> list[dict]:
    """The attack documents of every reading and seed asked for (``results/readings/metrics/<arch>/<name>/
    seed<k>.json``), each with ``defense`` set to the reading's name, so that it indexes like a defense. Missing
    files are left out (the comparisons say which seeds they lack); files for other names or seeds are not read."""
    documents = []
    for name in names:
        for seed in seeds:
            path = reading_metrics_path(arch, name, results_dir, seed)
            if not path.is_file():
                continue
            try:
                doc = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise ResultsError(f"{path}: cannot read it as JSON ({error}); delete it and re-run its stage "
                                   f"(dvc repro reading@{name}-{seed})") from error
            if doc.get("seed", seed) != seed or doc.get("arch", arch) != arch:
                raise ResultsError(f"{path}: the document is {doc.get('arch')} seed {doc.get('seed')}, its path says "
                                   f"{arch} seed {seed}; re-run its stage")
            documents.append({**doc, "arch": arch, "seed": seed, "defense": name})
    return documents


def budgets(index: dict, arch: str, name: str) -> dict:
    """The reading's forward-backward images over each of :data:`BUDGET_RIVALS`' of the same seed: per seed and
    their mean (``None`` where the rival has no document); and its mean training and attack seconds per seed."""
    out = {}
    for rival in BUDGET_RIVALS:
        ratios = {seed: index[(a, d, seed)]["cost"]["forward_backward_images"]
                  / index[(arch, rival, seed)]["cost"]["forward_backward_images"]
                  for (a, d, seed) in index if a == arch and d == name and (arch, rival, seed) in index}
        out[rival] = {"per_seed": {str(s): round(r, 3) for s, r in sorted(ratios.items())},
                      "mean": round(float(np.mean(list(ratios.values()))), 3) if ratios else None}
    own = [doc for (a, d, _), doc in index.items() if a == arch and d == name]
    for key, seconds in (("train_seconds", lambda doc: doc["cost"]["train_seconds"]),
                         ("attack_seconds", lambda doc: doc.get("seconds"))):
        values = [seconds(doc) for doc in own if seconds(doc) is not None]
        out[key] = round(float(np.mean(values)), 1) if values else None
    return out


def compare_readings(reading_documents: Iterable[dict], main_documents: Iterable[dict], *, arch: str,
                     names: Sequence[str], seeds: Collection[int] | None = None) -> tuple[dict, list[str]]:
    """``({reading: {comparison: entry}}, notes)``: :data:`READING_COMPARISONS` for each reading of ``names`` on
    ``arch``, entries as in :func:`eatlib.verdict.verdict` plus ``budget`` (see :func:`budgets`) per reading under
    the key ``"_budget"``. ``seeds`` (``readings.seeds``): the main run's other seeds are not the readings' rivals,
    so they are not reported as unpaired."""
    main = [doc for doc in main_documents if doc["arch"] == arch and (seeds is None or doc["seed"] in seeds)]
    clash = sorted({doc["defense"] for doc in main} & set(names))
    if clash:
        raise ResultsError(f"readings {clash} have the name of a defense of the main run; rename them in "
                           "readings.variants")
    index = index_documents([*main, *reading_documents])
    result, notes = {}, []
    for name in names:
        entries, own_notes = {}, []
        for comparison in READING_COMPARISONS:
            entry = compare_method(index, arch, comparison, own_notes, method=name)
            if entry is not None:
                entries[comparison.name] = entry
        notes += [f"{name} {note.removeprefix(f'{arch}/')}" for note in own_notes]
        if entries:
            result[name] = {**entries, "_budget": budgets(index, arch, name)}
        else:
            notes.append(f"{name}: no comparison could be made")
    return result, notes


def budget_table(result: dict) -> str:
    """One row per reading: its forward-backward images relative to the default EAT and PGD-AT (mean over seeds)."""
    lines = ["| EAT reading | forward-backward images / EAT (defenses.eat) | / PGD-AT | training s per seed "
             "| attack s per seed |", "|---|--:|--:|--:|--:|"]
    for name, entries in result.items():
        budget = entries["_budget"]
        cells = [f"{budget[r]['mean']:.2f}x" if budget[r]["mean"] is not None else "—" for r in BUDGET_RIVALS]
        cells += [f"{budget[k]:.0f}" if budget.get(k) is not None else "—" for k in ("train_seconds", "attack_seconds")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def write_readings(results_dir: str | Path, *, arch: str, names: Sequence[str], seeds: Sequence[int],
                   runs: Collection[tuple[str, str, int]] | None = None,
                   out_dir: str | Path | None = None) -> list[Path]:
    """Write ``<results_dir>/verdict_readings.json``, the table ``verdict_readings.md`` and the forest plot
    ``verdict_readings.png`` (to ``out_dir``, default ``<results_dir>/verdict_readings``). ``runs``: the main run's
    documents to read (``Params.attack_runs()``; stale files outside it are ignored). Returns the three paths."""
    from eatlib.forest_plot import forest_plot  # matplotlib only when drawing

    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "verdict_readings"
    if runs is not None:  # only this arch's documents of these seeds are read
        runs = {run for run in runs if run[0] == arch and run[2] in seeds}
    main = load_documents(results_dir, runs=runs)
    result, notes = compare_readings(load_readings(results_dir, arch, names, seeds), main, arch=arch, names=names,
                                     seeds=seeds)
    if not result:
        raise ResultsError("no reading could be compared:\n" + "\n".join(notes))
    comparisons = {name: {k: v for k, v in entries.items() if not k.startswith("_")}
                   for name, entries in result.items()}
    table = markdown_table(comparisons, notes, caption=f"{CAPTION} Architecture: {arch}.", group="EAT reading")
    table += "\nCompute of each reading (mean over seeds):\n\n" + budget_table(result)
    paths = [write_atomic(results_dir / "verdict_readings.json", json.dumps({arch: result}, indent=1) + "\n"),
             write_atomic(out_dir / "verdict_readings.md", table)]
    figure_path = out_dir / "verdict_readings.png"
    forest_plot(comparisons, out_path=figure_path, difference="reading − rival")
    return [*paths, figure_path]


__all__ = ["BUDGET_RIVALS", "READING_COMPARISONS", "budget_table", "budgets", "compare_readings", "load_readings",
           "write_readings"]
