"""The verdict on the paper's claim: paired differences over training seeds, each with two 95% intervals.

For each architecture and each comparison (:data:`COMPARISONS`), and for AMI and ARI, per training seed k:
``diff_k = score(EAT, seed k) - score(rival, seed k)`` (both trained with seed k, attacked on the same images).

- ``diff_mean``: the mean of ``diff_k`` over seeds;
- ``ci95``: the 95% t-interval over seeds, ``mean +- t_{n-1, 0.975} * sd / sqrt(n)`` (training noise, with the
  evaluation noise of each seed inside it);
- ``eval_ci95``: the evaluation noise alone: for each class-bootstrap replicate b (:mod:`eatlib.noise`; the same
  class draws and k-means seed for both sides), the mean over seeds of ``A_b - B_b``; its 2.5 and 97.5 percentiles;
- ``reading`` (the rule): **ahead** when both intervals lie above 0, **behind** when both lie below 0, otherwise
  **indistinguishable**. With one seed there is no interval over seeds: ``ci95`` then repeats ``eval_ci95``
  (``ci95_over`` says so) and the reading rests on the evaluation interval alone;
- ``seeds_needed``: the smallest n with ``t_{n-1, 0.975} * sd / sqrt(n) < 0.02``, from the observed per-seed sd:
  how many seeds this spread needs before a 0.02 difference can be told from zero (``None`` beyond
  :data:`SEEDS_NEEDED_CAP`).

Scores compared: the worst case over the attack suite (``worst``) for EAT against each defense; the headline attack
for EAT against its best single member (per seed, the member with the best headline AMI, picked on the test set,
which favours the member); the clean score for EAT against standard training (the "little clean loss" claim).

Inputs are attack documents (``results/metrics/<arch>/<defense>/seed<k>.json``); the functions here are pure, and
:func:`write_verdict` reads and writes the files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from eatlib.atomic import write_atomic
from eatlib.layout import seed_of
from eatlib.noise import DECIMALS, NOISE_METRICS
from eatlib.report import ResultsError, stale_documents

LEVEL = 0.95
RESOLVE = 0.02            # the difference seeds_needed is about
SEEDS_NEEDED_CAP = 100
READINGS = ("ahead", "behind", "indistinguishable")
METHOD = "eat"


@dataclass(frozen=True)
class Comparison:
    """EAT against ``rival`` on the score ``quantity`` (``worst``, ``headline`` or ``clean``)."""

    name: str
    rival: str           # a defense, or "best_member"
    quantity: str
    label: str


COMPARISONS = (
    Comparison("eat_vs_pgd_at", "pgd_at", "worst", "EAT vs PGD-AT (equal epochs)"),
    Comparison("eat_vs_trades", "trades", "worst", "EAT vs TRADES (equal epochs)"),
    Comparison("eat_vs_iat", "iat", "worst", "EAT vs IAT (equal epochs)"),
    Comparison("eat_vs_pgd_at_matched", "pgd_at_matched", "worst", "EAT vs PGD-AT (equal compute)"),
    Comparison("eat_vs_best_member", "best_member", "headline", "EAT vs its best member (headline attack)"),
    Comparison("eat_clean_vs_standard", "standard", "clean", "EAT vs standard (clean)"),
)
BEST_MEMBER = "best_member"


# ------------------------------------------------------------------------------------------------------- statistics

def _r(value: float) -> float:
    return round(float(value), DECIMALS)


def seed_interval(diffs: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The t-interval of the mean of ``diffs`` (one per seed); ``None`` with fewer than 2 seeds."""
    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    return float(diffs.mean() - half), float(diffs.mean() + half)


def eval_interval(replicate_diffs, level: float = LEVEL, center: float | None = None) -> tuple[float, float]:
    """Percentile interval of the seed-mean of ``replicate_diffs [seeds, B]`` (row k: replicate b of A - B).

    ``center``: shift the replicates so their mean is the observed difference first. Duplicated classes lift a
    replicate's score by an amount that depends on how good the clustering is (:mod:`eatlib.noise`), so the
    replicates' differences are offset from the observed one; only their spread is evaluation noise."""
    per_replicate = np.asarray(replicate_diffs, dtype=float).reshape(-1, np.shape(replicate_diffs)[-1]).mean(axis=0)
    if per_replicate.size == 0:
        raise ValueError("eval_interval needs at least one bootstrap replicate")
    if center is not None:
        per_replicate = per_replicate - per_replicate.mean() + center
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(per_replicate, [tail, 100 - tail])
    return float(low), float(high)


def reading(ci95: tuple[float, float] | None, eval_ci95: tuple[float, float]) -> str:
    """``ahead`` when every given interval lies above 0, ``behind`` when every one lies below, else
    ``indistinguishable``; ``ci95=None`` (one seed) leaves the evaluation interval alone."""
    intervals = [eval_ci95] if ci95 is None else [ci95, eval_ci95]
    if all(low > 0 for low, _ in intervals):
        return "ahead"
    if all(high < 0 for _, high in intervals):
        return "behind"
    return "indistinguishable"


def seeds_needed(sd: float, *, resolve: float = RESOLVE, level: float = LEVEL,
                 cap: int = SEEDS_NEEDED_CAP) -> int | None:
    """Smallest n >= 2 with ``t_{n-1} * sd / sqrt(n) < resolve``: the seeds a per-seed spread ``sd`` needs for a
    ``resolve`` difference to leave zero outside the interval; ``None`` when more than ``cap``."""
    if not sd >= 0:
        raise ValueError(f"sd must be a number >= 0, got {sd}")
    for n in range(2, cap + 1):
        if stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n) < resolve:
            return n
    return None


def paired_summary(a: Sequence[float], b: Sequence[float], a_replicates, b_replicates, *, metric: str,
                   seeds: Sequence[int] | None = None) -> dict:
    """The verdict entry of one metric from per-seed scores ``a [n]``, ``b [n]`` and their bootstrap replicates
    ``[n, B]`` (row k of both from the same seed, column b the same class draw)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a_rep, b_rep = np.asarray(a_replicates, dtype=float), np.asarray(b_replicates, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"a and b must be 1-D, one score per seed, the same length; got {a.shape} and {b.shape}")
    if a_rep.shape != b_rep.shape or a_rep.ndim != 2 or len(a_rep) != len(a):
        raise ValueError(f"replicates must be [seeds, B] for both sides; got {a_rep.shape} and {b_rep.shape} "
                         f"for {len(a)} seeds")
    seeds = list(range(len(a))) if seeds is None else [int(s) for s in seeds]
    diffs = a - b
    ci = seed_interval(diffs)
    eval_ci = eval_interval(a_rep - b_rep, center=float(diffs.mean()))
    sd = float(diffs.std(ddof=1)) if len(diffs) > 1 else None
    notes = []
    if ci is None:
        notes.append("one seed: no interval over seeds; ci95 repeats the evaluation interval and the reading uses "
                     "it alone")
    needed = seeds_needed(sd) if sd is not None else None
    if sd is not None and needed is None:
        notes.append(f"resolving a {RESOLVE} difference would need more than {SEEDS_NEEDED_CAP} seeds")
    entry = {
        "metric": metric,
        "diff_mean": _r(diffs.mean()),
        "ci95": [_r(v) for v in (ci if ci is not None else eval_ci)],
        "eval_ci95": [_r(v) for v in eval_ci],
        "seeds": len(diffs),
        "reading": reading(ci, eval_ci),
        "ci95_over": "seeds" if ci is not None else "evaluation",
        "sd": None if sd is None else _r(sd),
        "seeds_needed": needed,
        "per_seed": [{"seed": s, "a": _r(x), "b": _r(y), "diff": _r(x - y)}
                     for s, x, y in zip(seeds, a, b, strict=True)],
    }
    if notes:
        entry["notes"] = notes
    return entry


# ---------------------------------------------------------------------------------------------------- documents

def _doc_key(doc: dict) -> tuple[str, str, int]:
    for key in ("arch", "defense", "seed"):
        if key not in doc:
            raise ValueError(f"attack document lacks '{key}' (keys: {', '.join(sorted(doc))}); re-run its attack "
                             "stage with the seeded pipeline")
    return str(doc["arch"]), str(doc["defense"]), int(doc["seed"])


def index_documents(documents: Iterable[dict]) -> dict[tuple[str, str, int], dict]:
    """Attack documents by (arch, defense, seed); two for one key is an error, not a silent overwrite."""
    index = {}
    for doc in documents:
        key = _doc_key(doc)
        if key in index:
            raise ValueError(f"two attack documents for arch={key[0]}, defense={key[1]}, seed={key[2]}")
        index[key] = doc
    return index


def _side(doc: dict, quantity: str, metric: str) -> tuple[float, list[float] | None, dict | None]:
    """(score, bootstrap replicates or None, the NOISE dict or None) of ``doc`` for ``quantity``."""
    if quantity == "headline":
        score = doc["attacks"][doc["headline"]][metric]
        noise = doc.get("headline_noise")
    else:
        score = doc[quantity][metric]
        noise = (doc.get("noise") or {}).get(quantity)
        if quantity == "worst":  # the noise of the attack that is worst for this metric (AMI's and ARI's may differ)
            name = (doc.get("worst_attack") or {}).get(metric)
            worst = (doc.get("combined") if name == "combined" else (doc.get("attacks") or {}).get(name)) or {}
            noise = worst.get("noise") or noise
    return float(score), (noise["bootstrap"][metric] if noise else None), noise


def _best_member(doc: dict) -> tuple[str, dict] | None:
    """(member id, member entry) with the best headline AMI, or ``None`` when the document has no members."""
    members = doc.get("members") or {}
    scored = [(m["headline"]["ami"], mid, m) for mid, m in members.items() if isinstance(m.get("headline"), dict)]
    if not scored:
        return None
    _, mid, member = max(scored, key=lambda t: t[0])
    return mid, member


def _member_side(member: dict, metric: str) -> tuple[float, list[float] | None, dict | None]:
    noise = (member.get("noise") or {}).get("headline")
    return float(member["headline"][metric]), (noise["bootstrap"][metric] if noise else None), noise


def _pairing_note(noise_a: dict, noise_b: dict, where: str) -> str | None:
    same = all(noise_a.get(k) == noise_b.get(k) for k in ("seed", "labels_crc"))
    return None if same else (f"{where}: evaluation replicates are not paired (different noise seed or test "
                              "labels); the evaluation interval is then wider than a paired one")


def compare_method(index: dict, arch: str, comparison: Comparison, notes: list[str], *,
                   method: str = METHOD) -> dict | None:
    """One comparison's entry with ``method`` (EAT, or a reading of it) on the EAT side, or None with a note.

    Seeds pair across the two sides; a seed with one side only, or without evaluation noise, is left out and
    named in ``notes``.
    """
    where = f"{arch}/{comparison.name}"
    method_seeds = sorted(s for (a, d, s) in index if a == arch and d == method)
    if comparison.rival == BEST_MEMBER:
        rival_seeds = method_seeds
    else:
        rival_seeds = sorted(s for (a, d, s) in index if a == arch and d == comparison.rival)
    if not method_seeds or not rival_seeds:
        missing = method if not method_seeds else comparison.rival
        notes.append(f"{where}: skipped, no attack documents for {missing}")
        return None
    seeds = sorted(set(method_seeds) & set(rival_seeds))
    if unpaired := sorted(set(method_seeds) ^ set(rival_seeds)):
        notes.append(f"{where}: seeds {unpaired} have only one side and are left out")
    if not seeds:
        notes.append(f"{where}: skipped, no seed has both {method} and {comparison.rival}")
        return None

    rows = []   # per usable seed: (seed, member or None, {metric: (eat side, rival side)})
    for seed in seeds:
        eat = index[(arch, method, seed)]
        member = None
        if comparison.rival == BEST_MEMBER:
            best = _best_member(eat)
            if best is None:
                notes.append(f"{where}: seed {seed} skipped, the {method} document has no members[i].headline")
                continue
            member = best[0]
            sides = {m: (_side(eat, comparison.quantity, m), _member_side(best[1], m)) for m in NOISE_METRICS}
        else:
            rival = index[(arch, comparison.rival, seed)]
            sides = {m: (_side(eat, comparison.quantity, m), _side(rival, comparison.quantity, m))
                     for m in NOISE_METRICS}
        own, other = sides[NOISE_METRICS[0]]
        if own[2] is None or other[2] is None:
            side = method if own[2] is None else (f"member {member}" if member is not None else comparison.rival)
            notes.append(f"{where}: seed {seed} skipped, no evaluation noise for {side} ({comparison.quantity}); "
                         "re-run its attack stage")
            continue
        if note := _pairing_note(own[2], other[2], f"{where} seed {seed}"):
            notes.append(note)
        rows.append((seed, member, sides))
    if not rows:
        notes.append(f"{where}: skipped, no seed has scores and evaluation noise on both sides")
        return None
    width = min(len(side[1]) for _, _, sides in rows for pair in sides.values() for side in pair)
    if width == 0:
        notes.append(f"{where}: skipped, the evaluation noise has no bootstrap replicates")
        return None
    if any(len(side[1]) != width for _, _, sides in rows for pair in sides.values() for side in pair):
        notes.append(f"{where}: bootstrap replicate counts differ; the first {width} of each are used")

    per_metric = {}
    for metric in NOISE_METRICS:
        pairs = [sides[metric] for _, _, sides in rows]
        entry = paired_summary([own[0] for own, _ in pairs], [other[0] for _, other in pairs],
                               [own[1][:width] for own, _ in pairs], [other[1][:width] for _, other in pairs],
                               metric=metric, seeds=[seed for seed, _, _ in rows])
        if comparison.rival == BEST_MEMBER:
            for row, (_, member, _) in zip(entry["per_seed"], rows, strict=True):
                row["member"] = member
        per_metric[metric] = entry
    head = per_metric[NOISE_METRICS[0]]
    return {**{k: head[k] for k in ("metric", "diff_mean", "ci95", "eval_ci95", "seeds", "reading", "ci95_over",
                                     "seeds_needed")},
            "label": comparison.label, "a": method, "b": comparison.rival, "quantity": comparison.quantity,
            **per_metric}


def compare(documents: Iterable[dict], *, archs: Sequence[str] | None = None) -> tuple[dict, list[str]]:
    """``(verdict, notes)``: the verdict (see :func:`verdict`) and one line per comparison or seed left out."""
    index = index_documents(documents)
    if archs is None:
        archs = list(dict.fromkeys(a for a, _, _ in index))
    notes: list[str] = []
    result = {}
    for arch in archs:
        entries = {c.name: e for c in COMPARISONS if (e := compare_method(index, arch, c, notes)) is not None}
        if entries:
            result[arch] = entries
        else:
            notes.append(f"{arch}: no comparison could be made")
    return result, notes


def verdict(documents: Iterable[dict], *, archs: Sequence[str] | None = None) -> dict:
    """``{arch: {comparison: entry}}`` over :data:`COMPARISONS` from attack documents (``arch``, ``defense``,
    ``seed``, scores and ``noise``, as in ``results/metrics/<arch>/<defense>/seed<k>.json``).

    An entry holds the AMI summary at the top (``metric``, ``diff_mean``, ``ci95``, ``eval_ci95``, ``seeds``,
    ``reading``, ``ci95_over``, ``seeds_needed``), what was compared (``label``, ``a``, ``b``, ``quantity``), and
    the full summary per metric under ``ami`` and ``ari`` (with ``sd`` and ``per_seed``). Comparisons that cannot be
    made are left out; :func:`compare` also returns why."""
    return compare(documents, archs=archs)[0]


# ---------------------------------------------------------------------------------------------------- files

def load_documents(results_dir: str | Path = "results", *,
                   runs: Collection[tuple[str, str, int]] | None = None) -> list[dict]:
    """Every ``<results_dir>/metrics/<arch>/<defense>/seed<k>.json``; a document without ``seed`` takes k.
    ``runs``: the (arch, defense, seed) to read (:meth:`eatlib.params.Params.attack_runs`); documents outside it
    are stale (:func:`eatlib.report.stale_documents`) and left out unread."""
    folder = Path(results_dir) / "metrics"
    left_out = set(stale_documents(results_dir, runs)) if runs is not None else set()
    documents = []
    for path in sorted(folder.glob("*/*/seed*.json")):
        seed = seed_of(path)
        if seed is None or path in left_out:
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ResultsError(f"{path}: cannot read it as JSON ({error}); delete it and re-run its stage") from error
        if doc.get("seed", seed) != seed:
            raise ResultsError(f"{path}: its 'seed' is {doc['seed']} but the file name says {seed}")
        documents.append({**doc, "seed": seed, "arch": doc.get("arch", path.parent.parent.name),
                          "defense": doc.get("defense", path.parent.name)})
    if not documents:
        stale = f" ({len(left_out)} left out, not made by the current params)" if left_out else ""
        raise ResultsError(f"no attack documents in {folder}/<arch>/<defense>/seed<k>.json{stale}; run the attack "
                           "stages")
    return documents


def _interval(values) -> str:
    return f"[{values[0]:+.3f}, {values[1]:+.3f}]"


CAPTION = (
    f"**Verdict.** Paired differences over training seeds, EAT minus the rival (positive: EAT better). "
    f"95% CI over seeds: t-interval of the mean per-seed difference. 95% CI (evaluation): the same difference "
    f"under evaluation noise alone (k-means seeds and a bootstrap over test classes, paired draws, centred on the "
    f"observed difference). Reading: "
    f"*ahead* when both intervals lie above 0, *behind* when both lie below 0, else *indistinguishable*. "
    f"Seeds for ±{RESOLVE}: how many seeds the observed per-seed spread needs for the 95% interval's half-width "
    f"to fall below {RESOLVE} (a true difference of {RESOLVE} then clears zero about half the time)."
)


def markdown_table(result: dict, notes: Sequence[str] = (), *, caption: str = CAPTION, group: str = "arch") -> str:
    """The verdict as a Markdown table (one row per ``group`` (arch), comparison and metric) with its caption and
    notes."""
    lines = [caption, "",
             f"| {group} | comparison | metric | diff mean | 95% CI (seeds) | 95% CI (evaluation) | seeds | reading "
             f"| seeds for ±{RESOLVE} |",
             "|---|---|---|--:|--:|--:|--:|---|--:|"]
    for arch, comparisons in result.items():
        for entry in comparisons.values():
            for metric in NOISE_METRICS:
                e = entry[metric]
                seed_ci = _interval(e["ci95"]) if e["ci95_over"] == "seeds" else "— (1 seed)"
                needed = "—"
                if e["reading"] == "indistinguishable" and e["sd"] is not None:
                    needed = str(e["seeds_needed"]) if e["seeds_needed"] is not None else f">{SEEDS_NEEDED_CAP}"
                lines.append(f"| {arch} | {entry['label']} | {metric.upper()} | {e['diff_mean']:+.3f} | {seed_ci} "
                             f"| {_interval(e['eval_ci95'])} | {e['seeds']} | {e['reading']} | {needed} |")
    if notes:
        lines += ["", "Notes:", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def write_verdict(results_dir: str | Path = "results", *, archs: Sequence[str] | None = None,
                  runs: Collection[tuple[str, str, int]] | None = None,
                  out_dir: str | Path | None = None) -> list[Path]:
    """Write ``<results_dir>/verdict.json``, the table ``verdict.md`` and the forest plot ``verdict.png``.

    ``runs`` goes to :func:`load_documents` (the current params' runs, :meth:`eatlib.params.Params.attack_runs`);
    the documents it leaves out are named in the table's notes. The table and figure go to ``out_dir`` when given
    (the DVC stage uses ``results/verdict``, which the report stage copies on), else to ``results_dir/tables`` and
    ``results_dir/figures``. Returns the three paths."""
    from eatlib.forest_plot import forest_plot  # matplotlib only when drawing

    results_dir = Path(results_dir)
    result, notes = compare(load_documents(results_dir, runs=runs), archs=archs)
    if stale := (stale_documents(results_dir, runs) if runs is not None else []):
        notes.insert(0, f"left out {len(stale)} documents not in params.yaml (stale from an earlier run): "
                        + ", ".join(map(str, stale)))
    if not result:
        raise ResultsError("no comparison could be made for the verdict:\n" + "\n".join(notes))
    table_path = (Path(out_dir) if out_dir is not None else results_dir / "tables") / "verdict.md"
    figure_path = (Path(out_dir) if out_dir is not None else results_dir / "figures") / "verdict.png"
    paths = [
        write_atomic(results_dir / "verdict.json", json.dumps(result, indent=1) + "\n"),
        write_atomic(table_path, markdown_table(result, notes)),
    ]
    forest_plot(result, out_path=figure_path)
    return [*paths, figure_path]


__all__ = [
    "COMPARISONS", "Comparison", "compare", "compare_method", "eval_interval", "index_documents", "load_documents",
    "markdown_table", "paired_summary", "reading", "seed_interval", "seeds_needed", "verdict", "write_verdict",
]
