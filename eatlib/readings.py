"""Every reading of EAT against the comparison set: the verdict's paired differences, one block per reading.

A reading (``readings.variants.<name>`` in params.yaml) is EAT with some of ``defenses.eat`` read differently:
another self-transfer rule, split scheme, ensemble size, a gradient-diversity weight. Each is trained with the
training seeds ``readings.seeds`` on ``readings.arch`` and attacked like the main runs, so the comparisons of
:mod:`eatlib.verdict` apply unchanged with the reading in EAT's place (:data:`READING_COMPARISONS`), paired by seed
with the main run's models. The default EAT is one more rival: does this reading differ from ``defenses.eat``?

Compute is not equal across readings (``others`` costs more per batch than ``each_member``, ``momentum`` the same):
every reading reports its forward-backward images relative to the default EAT's and PGD-AT's, seed by seed, and
"vs PGD-AT at EAT's compute" is PGD-AT at the *default* EAT's budget, so it is equal compute only where that ratio
is 1. For the readings of ``readings.matched``, PGD-AT is also trained to the reading's own budget, seed by seed
(stage ``reading-matched``): the comparison "vs PGD-AT at its own compute" is then equal compute.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np

from eatlib.atomic import write_atomic
from eatlib.layout import MATCHED, reading_matched_metrics_path, reading_metrics_path
from eatlib.report import ResultsError
from eatlib.verdict import RESOLVE, Comparison, compare_method, index_documents, load_documents, markdown_table

READING_COMPARISONS = (
    Comparison("vs_pgd_at", "pgd_at", "worst", "vs PGD-AT (equal epochs)"),
    Comparison("vs_eat", "eat", "worst", "vs EAT of defenses.eat (equal epochs)"),
    Comparison("vs_pgd_at_matched", "pgd_at_matched", "worst", "vs PGD-AT at default EAT's compute"),
    Comparison("vs_best_member", "best_member", "headline", "vs its best member (headline attack)"),
    Comparison("clean_vs_standard", "standard", "clean", "vs standard (clean)"),
)
OWN_COMPUTE = "vs_pgd_at_own_compute"   # the comparison against PGD-AT given the reading's own compute
BUDGET_RIVALS = ("eat", "pgd_at")   # whose forward-backward images each reading's budget is given relative to

CAPTION = (
    "**Readings of EAT.** Each reading (`readings.variants`) in EAT's place, paired by training seed with the "
    "main run's models: reading minus rival (positive: the reading is better), worst case of the attack protocol "
    "(clean for *vs standard*, headline attack for *vs its best member*). Intervals and reading rule as in the "
    f"verdict table: *ahead* / *behind* only when both 95% intervals clear 0; seeds for ±{RESOLVE} as there. "
    "*vs PGD-AT at default EAT's compute* is equal compute only where the reading's budget ratio to EAT is 1; "
    "*vs PGD-AT at its own compute* (readings of `readings.matched`) is PGD-AT trained to the reading's "
    "forward-backward images of the same seed."
)


def matched_name(reading: str) -> str:
    """How PGD-AT given ``reading``'s compute is indexed beside the defenses (no defense or reading has an @)."""
    return f"{MATCHED}@{reading}"


def own_compute_comparison(reading: str) -> Comparison:
    return Comparison(OWN_COMPUTE, matched_name(reading), "worst", "vs PGD-AT at its own compute")


def load_readings(results_dir: str | Path, arch: str, names: Iterable[str], seeds: Iterable[int],
                  matched: Collection[str] = ()) -> list[dict]:
    """The attack documents of every reading and seed asked for (``results/readings/metrics/<arch>/<name>/
    seed<k>.json``), each with ``defense`` set to the reading's name, so that it indexes like a defense; and,
    for the readings of ``matched``, those of PGD-AT given the reading's compute (``defense``:
    :func:`matched_name`). Missing files are left out (the comparisons say which seeds they lack); files for other
    names or seeds are not read."""
    documents = []
    for name in names:
        for seed in seeds:
            sources = [(reading_metrics_path(arch, name, results_dir, seed), name, f"reading@{name}-{seed}")]
            if name in matched:
                sources.append((reading_matched_metrics_path(arch, name, results_dir, seed), matched_name(name),
                                f"reading-matched@{name}-{seed}"))
            for path, defense, stage in sources:
                if path.is_file():
                    documents.append({**_read_document(path, arch, seed, stage), "arch": arch, "seed": seed,
                                      "defense": defense})
    return documents


def _read_document(path: Path, arch: str, seed: int, stage: str) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ResultsError(f"{path}: cannot read it as JSON ({error}); delete it and re-run its stage "
                           f"(dvc repro {stage})") from error
    if doc.get("seed", seed) != seed or doc.get("arch", arch) != arch:
        raise ResultsError(f"{path}: the document is {doc.get('arch')} seed {doc.get('seed')}, its path says "
                           f"{arch} seed {seed}; re-run its stage ({stage})")
    return doc


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
    matched = {seed: index[(a, matched_name(name), seed)]["cost"]["forward_backward_images"]
               / doc["cost"]["forward_backward_images"]
               for (a, d, seed), doc in index.items() if a == arch and d == name
               and (arch, matched_name(name), seed) in index}
    if matched:  # PGD-AT at the reading's compute: about 1, up to the rounding of its epochs
        out["pgd_at_own_compute"] = {"per_seed": {str(s): round(r, 3) for s, r in sorted(matched.items())},
                                     "mean": round(float(np.mean(list(matched.values()))), 3)}
    own = [doc for (a, d, _), doc in index.items() if a == arch and d == name]
    for key, seconds in (("train_seconds", lambda doc: doc["cost"]["train_seconds"]),
                         ("attack_seconds", lambda doc: doc.get("seconds"))):
        values = [seconds(doc) for doc in own if seconds(doc) is not None]
        out[key] = round(float(np.mean(values)), 1) if values else None
    return out


def compare_readings(reading_documents: Iterable[dict], main_documents: Iterable[dict], *, arch: str,
                     names: Sequence[str], seeds: Collection[int] | None = None,
                     matched: Collection[str] = ()) -> tuple[dict, list[str]]:
    """``({reading: {comparison: entry}}, notes)``: :data:`READING_COMPARISONS` for each reading of ``names`` on
    ``arch`` (and, for those of ``matched``, :func:`own_compute_comparison`), entries as in
    :func:`eatlib.verdict.verdict` plus ``budget`` (see :func:`budgets`) per reading under the key ``"_budget"``.
    ``seeds`` (``readings.seeds``): the main run's other seeds are not the readings' rivals, so they are not
    reported as unpaired."""
    main = [doc for doc in main_documents if doc["arch"] == arch and (seeds is None or doc["seed"] in seeds)]
    clash = sorted({doc["defense"] for doc in main} & set(names))
    if clash:
        raise ResultsError(f"readings {clash} have the name of a defense of the main run; rename them in "
                           "readings.variants")
    unlisted = {matched_name(name) for name in names if name not in matched}   # not rivals: not indexed
    index = index_documents([*main, *(doc for doc in reading_documents if doc["defense"] not in unlisted)])
    result, notes = {}, []
    for name in names:
        entries, own_notes = {}, []
        own_compute = (own_compute_comparison(name),) if name in matched else ()
        for comparison in (*READING_COMPARISONS[:3], *own_compute, *READING_COMPARISONS[3:]):
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
    lines = ["| EAT reading | forward-backward images / EAT (defenses.eat) | / PGD-AT | PGD-AT at its compute / "
             "reading | training s per seed | attack s per seed |", "|---|--:|--:|--:|--:|--:|"]
    for name, entries in result.items():
        budget = entries["_budget"]
        ratios = [budget[r]["mean"] for r in BUDGET_RIVALS] + [budget.get("pgd_at_own_compute", {}).get("mean")]
        cells = [f"{ratio:.2f}x" if ratio is not None else "—" for ratio in ratios]
        cells += [f"{budget[k]:.0f}" if budget.get(k) is not None else "—" for k in ("train_seconds", "attack_seconds")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def write_readings(results_dir: str | Path, *, arch: str, names: Sequence[str], seeds: Sequence[int],
                   matched: Collection[str] = (), runs: Collection[tuple[str, str, int]] | None = None,
                   out_dir: str | Path | None = None) -> list[Path]:
    """Write ``<results_dir>/verdict_readings.json``, the table ``verdict_readings.md`` and the forest plot
    ``verdict_readings.png`` (to ``out_dir``, default ``<results_dir>/verdict_readings``). ``matched``
    (``readings.matched``): the readings with PGD-AT at their own compute. ``runs``: the main run's documents to
    read (``Params.attack_runs()``; stale files outside it are ignored). Returns the three paths."""
    from eatlib.forest_plot import forest_plot  # matplotlib only when drawing

    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "verdict_readings"
    if runs is not None:  # only this arch's documents of these seeds are read
        runs = {run for run in runs if run[0] == arch and run[2] in seeds}
    main = load_documents(results_dir, runs=runs)
    result, notes = compare_readings(load_readings(results_dir, arch, names, seeds, matched), main, arch=arch,
                                     names=names, seeds=seeds, matched=matched)
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


__all__ = ["BUDGET_RIVALS", "OWN_COMPUTE", "READING_COMPARISONS", "budget_table", "budgets", "compare_readings",
           "load_readings", "matched_name", "own_compute_comparison", "write_readings"]
