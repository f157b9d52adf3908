"""What a pipeline stage costs before and after its own work (issue 11: start-up per notebook stage).

Every stage of dvc.yaml is `papermill <notebook>`, run by `dvc repro`. Beyond the stage's timed work, each pays:

- the interpreter and the imports its notebook makes (``import eatlib.pipeline`` and what it pulls in; the
  heaviest modules are listed from ``python -X importtime``);
- papermill itself: its own start-up, a Jupyter kernel's start-up and the cells' round trips, measured on a
  notebook that does nothing but ``import eatlib.pipeline`` (against a bare interpreter doing the same);
- DVC: ``dvc status`` on this checkout (reading dvc.yaml, params and the lock, hashing what changed), which
  every `dvc repro` pays before the first stage; per stage it also hashes the stage's outputs.

Medians of ``--repeats`` runs, each a fresh process (as a stage is). Prints seconds and writes
results/benchmarks/startup.json. On the 2-core machine, run it alone: anything else running inflates every figure.

    .venv/bin/python benchmarks/startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
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
    """The modules with the largest cumulative import time under ``import eatlib.pipeline`` (top level only
    among nested ones: a module is listed unless one it imports is already listed with most of its time)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", IMPORT], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    rows = []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append({"module": match[4], "cumulative_s": int(match[2]) / 1e6, "depth": len(match[3]) // 2})
    external = [r for r in rows if not r["module"].startswith("eatlib") and r["depth"] >= 1]
    external.sort(key=lambda r: -r["cumulative_s"])
    picked: list[dict] = []
    for row in external:
        if not any(row["module"].startswith(p["module"] + ".") for p in picked) and len(picked) < top:
            picked.append({"module": row["module"], "cumulative_s": round(row["cumulative_s"], 3)})
    return picked


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
    figures["dvc_status_s"] = timed([str(bin_dir / "dvc"), "status"], args.repeats, env=env) if (
        ROOT / "dvc.lock").exists() else None
    figures = {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}
    figures["heaviest_imports"] = heaviest_imports()
    for key, value in figures.items():
        if key != "heaviest_imports":
            print(f"{key:30s} {value} s" if value is not None else f"{key:30s} (no dvc.lock)")
    print("heaviest imports under `import eatlib.pipeline` (cumulative s):")
    for row in figures["heaviest_imports"]:
        print(f"  {row['module']:40s} {row['cumulative_s']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
