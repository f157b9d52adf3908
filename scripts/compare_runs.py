"""How far every score moved between two runs of the pipeline: the committed summaries of a git revision against
the working tree's.

A change that alters training numerics (bf16 or folded crafting, a new library version) must say by how much every
table entry moved; a change that should not alter them must show that nothing did. This prints, per family and
defense, every score of ``results/summary/<arch>/<defense>/seed<k>.json`` (and of the ablation summaries) before and
after, the change, and the largest change per family; times and budgets are left out (they are not scores).

    python scripts/compare_runs.py --before <git rev> [--after-root .] [--tolerance 0] [--markdown FILE]

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
NOT_SCORES = frozenset({"train_min", "fb_images", "attack_s"})  # cost, not score: moves with the machine


class CompareError(RuntimeError):
    """The revision or its summaries cannot be read."""


def scores(document: dict) -> dict[str, float]:
    """The numeric scores of one summary document (cost fields and non-numbers left out)."""
    return {key: float(value) for key, value in document.items()
            if key not in NOT_SCORES and isinstance(value, (int, float)) and not isinstance(value, bool)}


def read_revision(rev: str, root: Path = ROOT) -> dict[str, dict]:
    """Every summary JSON committed at ``rev``, by path relative to the summaries folder."""
    try:
        listing = subprocess.run(["git", "-C", str(root), "ls-tree", "-r", "--name-only", rev, "--", SUMMARIES],
                                 check=True, capture_output=True, text=True).stdout.split()
    except subprocess.CalledProcessError as error:
        raise CompareError(f"git cannot list {SUMMARIES} at {rev!r}: {error.stderr.strip()}; "
                           "pass a commit of this repository (e.g. HEAD~3)") from error
    documents = {}
    for path in listing:
        if path.endswith(".json"):
            text = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{path}"],
                                  check=True, capture_output=True, text=True).stdout
            documents[path[len(SUMMARIES) + 1:]] = json.loads(text)
    if not documents:
        raise CompareError(f"no summaries under {SUMMARIES} at {rev!r}: that revision has no committed run")
    return documents


def read_tree(root: Path) -> dict[str, dict]:
    """Every summary JSON under ``root``/results/summary, by path relative to that folder."""
    folder = Path(root) / SUMMARIES
    documents = {path.relative_to(folder).as_posix(): json.loads(path.read_text())
                 for path in sorted(folder.rglob("*.json"))}
    if not documents:
        raise CompareError(f"no summaries under {folder}: run the pipeline (make repro) first")
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


def markdown(result: dict, *, tolerance: float = 0.0) -> str:
    """The moved scores (|delta| > ``tolerance``) as a table, and the largest move per family."""
    lines = ["| run | score | before | after | change |", "|---|---|--:|--:|--:|"]
    moved = [row for row in result["rows"] if abs(row[4]) > tolerance]
    lines += [f"| {run.removesuffix('.json')} | {score} | {old:.3f} | {new:.3f} | {delta:+.3f} |"
              for run, score, old, new, delta in moved]
    summary = [f"{len(moved)} of {len(result['rows'])} scores moved by more than {tolerance:g}."]
    for family, (delta, run, score) in sorted(result["max_abs"].items()):
        summary.append(f"- {family}: largest change {delta:+.3f} ({run.removesuffix('.json')}, {score})")
    for side in ("only_before", "only_after"):
        if result[side]:
            summary.append(f"- {side.replace('_', ' ')}: {', '.join(result[side])}")
    return "\n".join(summary + [""] + (lines if moved else ["(no score moved)"])) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the earlier run (e.g. HEAD~3)")
    parser.add_argument("--after-root", type=Path, default=ROOT, help="checkout holding the later run")
    parser.add_argument("--tolerance", type=float, default=0.0, help="list only changes larger than this")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    try:
        result = compare(read_revision(args.before), read_tree(args.after_root))
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
