"""Collect the verdicts of `make verdict-grid`'s experiments into results/verdict_grid.md.

Each experiment of the grid is one reading of EAT (a `-S defenses.eat.<key>=<value>`) run over every seed; its
commit (refs/exps/...) holds its results/verdict.json. One row per reading, architecture and comparison: the AMI
difference with its 95% interval over seeds and the reading (ahead / behind / indistinguishable).

    .venv/bin/python scripts/verdict_grid.py [--out results/verdict_grid.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path


def experiments() -> dict[str, str]:
    """Experiment name -> its git ref, for every DVC experiment of the repository."""
    refs = subprocess.run(["git", "for-each-ref", "refs/exps", "--format=%(refname)"], capture_output=True,
                          text=True, check=True).stdout.split()
    return {ref.rsplit("/", 1)[-1]: ref for ref in refs}


def verdict_of(ref: str) -> dict | None:
    shown = subprocess.run(["git", "show", f"{ref}:results/verdict.json"], capture_output=True, text=True)
    return json.loads(shown.stdout) if shown.returncode == 0 else None


def entry_for(comparison: dict, metric: str) -> dict:
    """One metric's entry of a comparison, in either shape eatlib.verdict writes (flat, or per metric)."""
    return comparison[metric] if metric in comparison else comparison


def rows(verdicts: dict[str, dict], metric: str = "ami") -> list[str]:
    lines = []
    for name, verdict in sorted(verdicts.items()):
        for arch, comparisons in verdict.items():
            if not isinstance(comparisons, dict) or arch.startswith("_"):
                continue
            for comparison, value in comparisons.items():
                if not isinstance(value, dict):
                    continue
                entry = entry_for(value, metric)
                if "diff_mean" not in entry:
                    continue
                lo, hi = entry.get("ci95") or (float("nan"), float("nan"))
                lines.append(f"| {name} | {arch} | {comparison} | {entry['diff_mean']:+.3f} | [{lo:+.3f}, {hi:+.3f}] "
                             f"| {entry.get('seeds', '')} | {entry.get('reading', '')} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/verdict_grid.md")
    args = parser.parse_args()
    verdicts = {name: v for name, ref in experiments().items() if (v := verdict_of(ref)) is not None}
    if not verdicts:
        raise SystemExit("no experiment with a results/verdict.json: run `make verdict-grid` first")
    header = ["Every reading of EAT, each over all training seeds (`make verdict-grid`): EAT minus the other "
              "method, AMI under the worst case of the attack protocol, 95% t-interval over seeds.", "",
              "| EAT reading | arch | comparison | diff AMI | 95% CI (seeds) | seeds | verdict |",
              "|---|---|---|---:|---|---:|---|"]
    Path(args.out).write_text("\n".join(header + rows(verdicts)) + "\n")
    print(f"{len(verdicts)} experiments -> {args.out}")


if __name__ == "__main__":
    main()
