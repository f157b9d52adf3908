"""How far every score moved between two runs of the pipeline: the committed summaries of a git revision against
the working tree's.

A change that alters training numerics (bf16 or folded crafting, a new library version) must say by how much every
table entry moved; a change that should not alter them must show that nothing did. This prints, per family and
defense, every score of ``results/summary/<arch>/<defense>/seed<k>.json`` (and of the ablation summaries) before and
after, the change, and the largest change per family; times and budgets are left out (they are not scores).

    python scripts/compare_runs.py --before <git rev> [--after-root .] [--folder results/summary]
                                   [--tolerance 0] [--markdown FILE]

``--folder results/metrics`` compares the attack documents instead, every score at full precision (nested keys
joined by "/"): what "unchanged" should be checked on.

Exit status 0 either way (movement is a finding, not an error), 2 when the revision or the summaries are missing.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARIES = "results/summary"
# Cost, not score: moves with the machine (summaries: train_min, attack_s; metrics documents: the rest).
NOT_SCORES = frozenset({"train_min", "fb_images", "attack_s", "cost", "timing", "seconds", "images_per_second"})


class CompareError(RuntimeError):
    """The revision or its summaries cannot be read."""


def scores(document: dict, prefix: str = "") -> dict[str, float]:
    """The numeric scores of one document, nested keys joined by "/" (list items by their index); costs, times and
    non-numbers left out."""
    items = document.items() if isinstance(document, dict) else enumerate(document)
    found = {}
    for key, value in items:
        if key in NOT_SCORES:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            found.update(scores(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[name] = float(value)
    return found


def read_revision(rev: str, root: Path = ROOT, folder: str = SUMMARIES) -> dict[str, dict]:
    """Every JSON under ``folder`` committed at ``rev``, by path relative to that folder."""
    try:
        listing = subprocess.run(["git", "-C", str(root), "ls-tree", "-r", "--name-only", rev, "--", folder],
                                 check=True, capture_output=True, text=True).stdout.split()
    except subprocess.CalledProcessError as error:
        raise CompareError(f"git cannot list {folder} at {rev!r}: {error.stderr.strip()}; "
                           "pass a commit of this repository (e.g. HEAD~3)") from error
    documents = {}
    for path in listing:
        if path.endswith(".json"):
            text = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{path}"],
                                  check=True, capture_output=True, text=True).stdout
            documents[path[len(folder.rstrip("/")) + 1:]] = json.loads(text)
    if not documents:
        raise CompareError(f"no JSON under {folder} at {rev!r}: that revision has no committed run")
    return documents


def read_tree(root: Path, folder: str = SUMMARIES) -> dict[str, dict]:
    """Every JSON under ``root``/``folder``, by path relative to that folder."""
    base = Path(root) / folder
    documents = {path.relative_to(base).as_posix(): json.loads(path.read_text())
                 for path in sorted(base.rglob("*.json"))}
    if not documents:
        raise CompareError(f"no JSON under {base}: run the pipeline (make repro) first")
    return documents


def compare(before: dict[str, dict], after: dict[str, dict]) -> dict:
    """Per run and score, (before, after, after - before); plus the runs only one side has.

    Returns ``{"rows": [(run, score, before, after, delta)], "only_before": [...], "only_after": [...],
    "max_abs": {family: (delta, run, score)}}`` with the family the run path's first part."""
    rows, max_abs = [], {}
    for run in sorted(set(before) & set(after)):
        old, new = scores(before[run]), scores(after[run])
        for score in sorted(set(old) & set(new)):
            delta = new[score] - old[score]
            rows.append((run, score, old[score], new[score], delta))
            family = run.split("/")[0]
            if family not in max_abs or abs(delta) > abs(max_abs[family][0]):
                max_abs[family] = (delta, run, score)
    return {"rows": rows, "only_before": sorted(set(before) - set(after)),
            "only_after": sorted(set(after) - set(before)), "max_abs": max_abs}


def _signed(delta: float) -> str:
    """A change to 4 decimals, or in scientific notation where that would read +0.0000 for a nonzero one."""
    return f"{delta:+.4f}" if delta == 0 or abs(delta) >= 5e-5 else f"{delta:+.1e}"


def markdown(result: dict, *, tolerance: float = 0.0) -> str:
    """The moved scores (|delta| > ``tolerance``) as a table, and the largest move per family."""
    lines = ["| run | score | before | after | change |", "|---|---|--:|--:|--:|"]
    moved = [row for row in result["rows"] if abs(row[4]) > tolerance]
    lines += [f"| {run.removesuffix('.json')} | {score} | {old:.4f} | {new:.4f} | {_signed(delta)} |"
              for run, score, old, new, delta in moved]
    summary = [f"{len(moved)} of {len(result['rows'])} scores moved by more than {tolerance:g}."]
    for family, (delta, run, score) in sorted(result["max_abs"].items()):
        summary.append(f"- {family}: largest change {_signed(delta)} ({run.removesuffix('.json')}, {score})")
    per_run: dict[str, list] = {}
    for run, _, _, _, delta in result["rows"]:
        entry = per_run.setdefault(run, [0, 0, 0.0])
        entry[0] += abs(delta) > tolerance
        entry[1] += 1
        entry[2] = max(entry[2], abs(delta))
    summary += ["", "| run | scores moved | largest abs change |", "|---|--:|--:|"]
    summary += [f"| {run.removesuffix('.json')} | {moved_n} of {total} | {_signed(largest).lstrip('+')} |"
                for run, (moved_n, total, largest) in per_run.items()]
    for side in ("only_before", "only_after"):
        if result[side]:
            summary.append(f"- {side.replace('_', ' ')}: {', '.join(result[side])}")
    return "\n".join(summary + [""] + (lines if moved else ["(no score moved)"])) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the earlier run (e.g. HEAD~3)")
    parser.add_argument("--after-root", type=Path, default=ROOT, help="checkout holding the later run")
    parser.add_argument("--folder", default=SUMMARIES,
                        help="results folder to compare (results/metrics: every score at full precision)")
    parser.add_argument("--tolerance", type=float, default=0.0, help="list only changes larger than this")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    try:
        result = compare(read_revision(args.before, folder=args.folder),
                         read_tree(args.after_root, args.folder))
    except CompareError as error:
        print(f"compare_runs: {error}", file=sys.stderr)
        return 2
    report = markdown(result, tolerance=args.tolerance)
    print(report, end="")
    if args.markdown:
        args.markdown.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
