"""`dvc repro` with one line per stage: which stage of how many is running, and how long it took.

    python scripts/repro.py [dvc repro arguments ...]      (`make repro`: ... report; `make verdict-grid`: ... readings)

Prints e.g. ``[3/41] train@resnet-eat ... 2m13s``. The stages' own output (papermill, the notebooks' logs) is
not shown: each cell's output is in the executed notebook under results/notebooks/. When a stage fails, its last
lines of output and DVC's error are printed in full and the exit status is DVC's.

The count comes from ``dvc status --json`` (the stages that changed) and ``dvc dag --dot`` (everything downstream
of them re-runs too); ``dvc repro --dry`` cannot plan a fresh clone, where it stops at the first missing output.
Standard library only; `dvc` is looked up on PATH (the Makefile puts the venv first).
"""

from __future__ import annotations

import collections
import json
import os
import platform
import re
import subprocess
import sys
import time
from typing import TextIO

RUNNING = re.compile(r"^Running stage '(?P<name>[^']+)':$")
LOCKED = re.compile(r"^Updating lock file ")
FAILED = re.compile(r"^ERROR: ")
OUTPUT_NOTEBOOK = re.compile(r"\s(results/notebooks/\S+\.ipynb)")
TAIL_LINES = 60


def changed_stages(status: dict) -> set[str]:
    """Stages that `dvc status --json` reports as changed (``.dvc`` data sources have no command to run)."""
    return {name for name in status if not name.endswith(".dvc")}


def parse_dot_edges(dot: str) -> list[tuple[str, str]]:
    """The ``"a" -> "b";`` edges of `dvc dag --dot` (a is upstream of b)."""
    return re.findall(r'^"([^"]+)" -> "([^"]+)";$', dot, flags=re.MULTILINE)


def reachable(starts: set[str], edges: list[tuple[str, str]], *, upstream: bool = False) -> set[str]:
    """``starts`` and every stage downstream of one of them (``upstream=True``: upstream)."""
    neighbours = collections.defaultdict(set)
    for above, below in edges:
        if upstream:
            neighbours[below].add(above)
        else:
            neighbours[above].add(below)
    found, todo = set(), list(starts)
    while todo:
        stage = todo.pop()
        if stage not in found:
            found.add(stage)
            todo.extend(neighbours[stage])
    return found


def planned_stages(changed: set[str], edges: list[tuple[str, str]], targets: set[str] = frozenset()) -> set[str]:
    """``changed`` and every stage downstream of one of them: what `dvc repro` will run; with ``targets``
    (`dvc repro <targets>`), only those of them at or upstream of a target."""
    planned = reachable(changed, edges)
    if targets:
        planned &= reachable(targets, edges, upstream=True)
    return {stage for stage in planned if not stage.endswith(".dvc")}


def format_duration(seconds: float) -> str:
    """``42s``, ``2m13s``, ``1h05m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Turns `dvc repro`'s output, line by line, into one line per stage on ``out``.

    ``feed(line, now)`` for each line of output, ``finish(returncode, now)`` once at the end; ``now`` is a clock
    in seconds (injected, so that tests need no real time)."""

    def __init__(self, total: int, out: TextIO, *, tail_lines: int = TAIL_LINES):
        self.total, self.out = total, out
        self.index, self.stage, self.started, self.notebook = 0, None, 0.0, None
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.errors: list[str] = []
        self.durations: dict[str, float] = {}

    def feed(self, line: str, now: float) -> None:
        line = line.rstrip("\n")
        if match := RUNNING.match(line):
            self._end(now)
            self.index += 1
            self.total = max(self.total, self.index)  # more ran than planned: never print 12/11
            self.stage, self.started, self.notebook = match["name"], now, None
            self.tail.clear()
            self._write(f"[{self.index}/{self.total}] {self.stage} ... ")
        elif LOCKED.match(line):
            self._end(now)
        elif FAILED.match(line):
            self.errors.append(line)
        elif self.stage is not None:
            if line.startswith("> ") and self.notebook is None:
                found = OUTPUT_NOTEBOOK.findall(line)
                self.notebook = found[-1] if found else None
            self.tail.append(line)

    def finish(self, returncode: int, now: float) -> int:
        if returncode == 0:
            self._end(now)
            if self.durations:
                spent = format_duration(sum(self.durations.values()))
                self._write(f"{len(self.durations)} stage(s) ran in {spent}\n")
            else:
                self._write("every stage is up to date\n")
            return 0
        if self.stage is not None:
            self._write(f"FAILED after {format_duration(now - self.started)}\n")
            self._write(f"--- last {len(self.tail)} lines of {self.stage}'s output ---\n")
            self._write("".join(f"{line}\n" for line in self.tail))
            if self.notebook:
                self._write(f"--- every cell's output: {self.notebook} ---\n")
        self._write("".join(f"{line}\n" for line in self.errors) or f"dvc repro exited with {returncode}\n")
        return returncode

    def _end(self, now: float) -> None:
        if self.stage is not None:
            self.durations[self.stage] = now - self.started
            self._write(f"{format_duration(now - self.started)}\n")
            self.stage = None

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def machine_description(cpuinfo: str | None = None) -> str:
    """``AMD EPYC 9B14, 2 cores``: the CPU model (Linux's /proc/cpuinfo, else the platform's name) and the cores
    this process may use. Printed first, so a log says which machine its times (and its rounding) come from."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as file:
                cpuinfo = file.read()
        except OSError:
            cpuinfo = ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name") and ":" in line), "") or platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return f"{model or 'unknown CPU'}, {cores} core{'' if cores == 1 else 's'}"


def _dvc(*args: str) -> str:
    done = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"dvc {' '.join(args)} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def main(argv: list[str]) -> int:
    print(f"machine: {machine_description()}", flush=True)
    edges = parse_dot_edges(_dvc("dag", "--dot"))
    targets = {arg for arg in argv if not arg.startswith("-")}   # e.g. `make repro` runs `... report`
    plan = planned_stages(changed_stages(json.loads(_dvc("status", "--json") or "{}")), edges, targets)
    print(f"dvc repro: {len(plan)} stage(s) to run (cell outputs go to the executed notebooks in results/notebooks/)",
          flush=True)
    progress = Progress(len(plan), sys.stdout)
    process = subprocess.Popen(["dvc", "repro", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    for line in process.stdout:
        progress.feed(line, time.monotonic())
    return progress.finish(process.wait(), time.monotonic())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
