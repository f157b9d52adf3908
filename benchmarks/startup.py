"""What a pipeline stage costs before and after its own work (issue 11: start-up per notebook stage).

Every stage of dvc.yaml is `papermill <notebook>`, run by `dvc repro`. Beyond the stage's timed work, each pays:

- the interpreter and the imports its notebook makes (``import eatlib.pipeline`` and what it pulls in; the
  heaviest packages are listed from ``python -X importtime``);
- papermill itself: its own start-up, a Jupyter kernel's start-up and the cells' round trips, measured on a
  notebook that does nothing but ``import eatlib.pipeline`` (against a bare interpreter doing the same);
- DVC: ``dvc status`` on this checkout (reading dvc.yaml, params and the lock, hashing what changed), which
  every `dvc repro` pays before the first stage; per stage it also hashes the stage's outputs and reads dvc.lock
  several times (ruamel's safe loader: the C parser of ruamel.yaml.clib where installed, ``lock_safe_*``) and
  once more to rewrite it (round-trip loader and dumper, pure Python either way: ``lock_rewrite_s``).

Two of these were cut (the Makefile): papermill's import of nbformat used to import rfc3987-syntax, which builds
~35 Lark parsers (``import_papermill_s``; ``iri_parsers_installed`` says whether it is back), and DVC read the
lock with ruamel's pure-Python parser (``lock_safe_c_over_pure``: the ratio, measured in this run).

Medians of ``--repeats`` runs, each a fresh process (as a stage is). Prints seconds and writes
results/benchmarks/startup.json. On the 2-core machine, run it alone: anything else running inflates every figure.

    .venv/bin/python benchmarks/startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "benchmarks" / "startup.json"
IMPORT = "import eatlib.pipeline"


def timed(command: list[str], repeats: int, **kwargs) -> float:
    """Median wall seconds of ``command`` over ``repeats`` fresh runs (a failure is an error, not a time)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT, **kwargs)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def heaviest_imports(top: int = 8) -> list[dict]:
    """The packages with the largest cumulative import time under ``import eatlib.pipeline``, per top-level
    package (its slowest module). Cumulative: a package that another imports counts in both (scipy.stats,
    pulled in by pytorch_metric_learning, is in each)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", IMPORT], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    slowest: dict[str, tuple[float, str]] = {}
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| *(\S+)", line)
        if match and not match[2].startswith("eatlib"):
            package, seconds = match[2].split(".")[0], int(match[1]) / 1e6
            if seconds > slowest.get(package, (0.0, ""))[0]:
                slowest[package] = (seconds, match[2])
    ranked = sorted(slowest.items(), key=lambda item: -item[1][0])[:top]
    return [{"package": package, "module": module, "cumulative_s": round(seconds, 3)}
            for package, (seconds, module) in ranked]


def lock_parse_times(lock: Path, repeats: int) -> dict[str, float]:
    """Seconds DVC spends on ``lock`` per read (safe loader, C and pure-Python parser) and per rewrite."""
    import io

    from ruamel.yaml import YAML

    text = lock.read_text()

    def median(action) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            action()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    figures = {"lock_bytes": len(text), "lock_safe_pure_s": median(lambda: YAML(typ="safe", pure=True).load(text))}
    if "clib" in YAML(typ="safe").Parser.__module__:
        figures["lock_safe_c_s"] = median(lambda: YAML(typ="safe").load(text))
        figures["lock_safe_c_over_pure"] = figures["lock_safe_pure_s"] / figures["lock_safe_c_s"]
    rewrite = YAML()
    figures["lock_rewrite_s"] = median(lambda: rewrite.dump(rewrite.load(text), io.StringIO()))
    return figures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    figures = {
        "python_bare_s": timed([sys.executable, "-c", "pass"], args.repeats),
        "import_torch_s": timed([sys.executable, "-c", "import torch"], args.repeats),
        "import_eatlib_pipeline_s": timed([sys.executable, "-c", IMPORT], args.repeats),
        "import_papermill_s": timed([sys.executable, "-c", "import papermill.cli"], args.repeats),
        "iri_parsers_installed": importlib.util.find_spec("rfc3987_syntax") is not None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(IMPORT)])
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        source, executed = Path(tmp) / "startup.ipynb", Path(tmp) / "out.ipynb"
        nbformat.write(notebook, source)
        figures["papermill_import_notebook_s"] = timed(
            [str(bin_dir / "papermill"), "--kernel", "python3", "--no-progress-bar", str(source), str(executed)],
            args.repeats, env=env)
    figures["papermill_overhead_s"] = figures["papermill_import_notebook_s"] - figures["import_eatlib_pipeline_s"]
    figures["dvc_status_s"] = None
    if (ROOT / "dvc.lock").exists():
        figures["dvc_status_s"] = timed([str(bin_dir / "dvc"), "status"], args.repeats, env=env)
        figures.update(lock_parse_times(ROOT / "dvc.lock", args.repeats))
    figures = {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}
    figures["heaviest_imports"] = heaviest_imports()
    for key, value in figures.items():
        if key != "heaviest_imports":
            unit = " s" if key.endswith("_s") else ""
            print(f"{key:30s} {value}{unit}" if value is not None else f"{key:30s} (no dvc.lock)")
    print("heaviest packages under `import eatlib.pipeline` (cumulative s, slowest module):")
    for row in figures["heaviest_imports"]:
        print(f"  {row['package']:26s} {row['cumulative_s']:.2f}  {row['module']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
