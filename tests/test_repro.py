"""scripts/repro.py: one line per stage from `dvc repro`'s output, the plan from status + dag, failures in full."""

import importlib.util
import io
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "repro.py"
spec = importlib.util.spec_from_file_location("repro", SCRIPT)
repro = importlib.util.module_from_spec(spec)
spec.loader.exec_module(repro)

# What `dvc repro` (DVC 3) prints, captured from a two-stage pipeline whose second stage fails.
CMD_TRAIN = ("> mkdir -p results/notebooks/train && papermill --kernel python3 --no-progress-bar "
             "notebooks/02_train.ipynb results/notebooks/train/resnet-eat.ipynb -p arch resnet -p defense eat")
CMD_ATTACK = CMD_TRAIN.replace("train", "attack").replace("02_attack", "03_attack")
OUTPUT = f"""Stage 'data' didn't change, skipping
Running stage 'train@resnet-eat':
{CMD_TRAIN}
Input Notebook:  notebooks/02_train.ipynb
Output Notebook: results/notebooks/train/resnet-eat.ipynb
Generating lock file 'dvc.lock'
Updating lock file 'dvc.lock'

Running stage 'attack@resnet-eat':
{CMD_ATTACK}
Input Notebook:  notebooks/03_attack.ipynb
papermill.exceptions.PapermillExecutionError:
ValueError: attacks.headline.eps must be positive
ERROR: failed to reproduce 'attack@resnet-eat': failed to run: mkdir -p results/notebooks/attack, exited with 1
"""


def feed(text, total, clock):
    out = io.StringIO()
    progress = repro.Progress(total, out, tail_lines=3)
    for line, now in zip(text.splitlines(keepends=True), clock, strict=False):
        progress.feed(line, now)
    return progress, out


def test_each_stage_gets_one_line_with_its_index_of_the_total_and_its_duration():
    ok = OUTPUT.split("Running stage 'attack")[0]
    progress, out = feed(ok, 41, [0, 5, 5, 6, 7, 140, 140.2, 141])
    assert progress.finish(0, 150) == 0
    assert out.getvalue() == "[1/41] train@resnet-eat ... 2m15s\n1 stage(s) ran in 2m15s\n"


def test_a_failing_stage_prints_its_tail_notebook_and_dvc_error_and_keeps_the_exit_status():
    progress, out = feed(OUTPUT, 2, range(0, 1000, 10))
    assert progress.finish(255, 200) == 255
    text = out.getvalue()
    assert text.startswith("[1/2] train@resnet-eat ... 50s\n[2/2] attack@resnet-eat ... FAILED after 2m00s\n")
    # the last 3 lines of the stage's output (not the earlier ones), then where the full log is, then DVC's error
    assert "ValueError: attacks.headline.eps must be positive\n" in text and CMD_ATTACK not in text
    assert "every cell's output: results/notebooks/attack/resnet-eat.ipynb" in text
    assert text.endswith("ERROR: failed to reproduce 'attack@resnet-eat': failed to run: mkdir -p "
                         "results/notebooks/attack, exited with 1\n")
    assert "Output Notebook" not in text.split("FAILED")[0]  # stage output never floods the progress lines


def test_more_stages_than_planned_grow_the_total_instead_of_overflowing_it():
    two = "Running stage 'a':\nUpdating lock file 'dvc.lock'\nRunning stage 'b':\nUpdating lock file 'dvc.lock'\n"
    _, out = feed(two, 1, [0, 1, 2, 3])
    assert out.getvalue() == "[1/1] a ... 1s\n[2/2] b ... 1s\n"


def test_the_plan_is_every_changed_stage_and_everything_downstream_of_it():
    dot = ('strict digraph {\n"data.dvc";\n"data";\n"train@r-eat";\n"data.dvc" -> "data";\n'
           '"data" -> "train@r-eat";\n"train@r-eat" -> "attack@r-eat";\n"data" -> "train@r-std";\n}\n')
    edges = repro.parse_dot_edges(dot)
    assert ("train@r-eat", "attack@r-eat") in edges and len(edges) == 4
    changed = repro.changed_stages({"data.dvc": [], "train@r-eat": [{"changed deps": {"eatlib": "modified"}}]})
    assert repro.planned_stages(changed, edges) == {"train@r-eat", "attack@r-eat"}
    assert repro.planned_stages({"data"}, edges) == {"data", "train@r-eat", "attack@r-eat", "train@r-std"}
    # `dvc repro attack@r-eat` runs only what that target needs.
    assert repro.planned_stages({"data"}, edges, {"attack@r-eat"}) == {"data", "train@r-eat", "attack@r-eat"}


def test_durations_read_like_a_clock():
    assert [repro.format_duration(s) for s in (0.4, 42, 133, 3600 + 5 * 60 + 9)] == ["0s", "42s", "2m13s", "1h05m"]


def test_the_machine_line_names_the_cpu_model_and_the_usable_cores(monkeypatch):
    cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu\n"
    monkeypatch.setattr(repro.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert repro.machine_description(cpuinfo) == "AMD EPYC 9B14, 2 cores"
    monkeypatch.setattr(repro.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert repro.machine_description(cpuinfo) == "AMD EPYC 9B14, 1 core"
