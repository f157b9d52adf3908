"""scripts/readme_table.py: replaces only the text between the markers, idempotently, and fails clearly."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "readme_table.py"
spec = importlib.util.spec_from_file_location("readme_table", SCRIPT)
readme_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_table)

BEFORE = "# Title\n\nIntro text.\n\n"
AFTER = "\n\n## Next section\n\nMore text <!-- not a marker -->.\n"
README = BEFORE + readme_table.START + "\n(run `make repro` to fill in this table)\n" + readme_table.END + AFTER
TABLE = "*Caption.*\n\n| defense | clean NMI |\n|---|---:|\n| standard | 0.812 |\n"


@pytest.fixture
def files(tmp_path):
    readme, table = tmp_path / "README.md", tmp_path / "main.md"
    readme.write_text(README)
    table.write_text(TABLE)
    return readme, table


def test_replaces_only_the_text_between_the_markers(files):
    readme, table = files
    assert readme_table.update_readme(readme, table) is True
    text = readme.read_text()
    assert text == BEFORE + readme_table.START + "\n" + TABLE + readme_table.END + AFTER
    assert "fill in this table" not in text


def test_running_twice_changes_nothing(files):
    readme, table = files
    readme_table.update_readme(readme, table)
    once = readme.read_bytes()
    assert readme_table.update_readme(readme, table) is False
    assert readme.read_bytes() == once


def test_new_table_replaces_the_old_one(files):
    readme, table = files
    readme_table.update_readme(readme, table)
    table.write_text(TABLE.replace("0.812", "0.900"))
    readme_table.update_readme(readme, table)
    text = readme.read_text()
    assert "0.900" in text and "0.812" not in text and text.endswith(AFTER)


@pytest.mark.parametrize("broken", [
    README.replace(readme_table.START, ""),
    README.replace(readme_table.END, ""),
    README + readme_table.START,
    BEFORE + readme_table.END + "\n" + readme_table.START + AFTER,
])
def test_missing_duplicate_or_swapped_markers_are_errors(files, broken):
    readme, table = files
    readme.write_text(broken)
    with pytest.raises(readme_table.ReadmeTableError, match="results:main"):
        readme_table.update_readme(readme, table)
    assert readme.read_text() == broken


def test_missing_or_empty_table_is_an_error(files):
    readme, table = files
    table.write_text("  \n")
    with pytest.raises(readme_table.ReadmeTableError, match="is empty"):
        readme_table.update_readme(readme, table)
    table.unlink()
    with pytest.raises(readme_table.ReadmeTableError, match="does not exist"):
        readme_table.update_readme(readme, table)
    assert readme.read_text() == README


def test_command_line_exit_codes(files):
    readme, table = files
    run = [sys.executable, str(SCRIPT), "--readme", str(readme), "--table", str(table)]
    done = subprocess.run(run, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "updated" in done.stdout
    readme.write_text("no markers here\n")
    done = subprocess.run(run, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "error:" in done.stderr and "results:main:start" in done.stderr


def test_the_readme_gets_the_report_tables_means_sds_and_seeds_column(tmp_path):
    from test_report import write_synthetic_results

    from eatlib import report

    root = tmp_path / "results"
    written = write_synthetic_results(root)
    report.write_tables(root)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert readme_table.update_readme(readme, root / "tables" / "main.md") is True
    inside = readme.read_text().split(readme_table.START)[1].split(readme_table.END)[0]
    header = next(line for line in inside.splitlines() if line.startswith("| defense"))
    assert header.rstrip(" |").endswith("| seeds")
    clean = [doc["clean"]["ami"] for doc in written[("resnet", "eat")]]
    mean, sd = sum(clean) / len(clean), (sum((c - sum(clean) / 3) ** 2 for c in clean) / 2) ** 0.5
    eat = next(line for line in inside.split("**resnet**")[1].splitlines() if line.startswith("| eat |"))
    assert f"{mean:.3f} ± {sd:.3f}" in eat and eat.rstrip(" |").endswith("| 3")


def test_the_command_line_copies_the_verdict_and_readings_tables_where_the_readme_has_their_markers(tmp_path):
    tables = tmp_path / "results" / "tables"
    (tmp_path / "results" / "verdict_readings").mkdir(parents=True)
    tables.mkdir()
    (tables / "main.md").write_text(TABLE)
    (tables / "verdict.md").write_text("| verdict row |\n")
    (tmp_path / "results" / "verdict_readings" / "verdict_readings.md").write_text("| readings row |\n")
    marks = {name: f"<!-- results:{name}:start -->\nold\n<!-- results:{name}:end -->\n" for name in ("verdict",
                                                                                                    "readings")}
    readme = tmp_path / "README.md"
    readme.write_text(README + marks["verdict"] + marks["readings"])
    done = subprocess.run([sys.executable, str(SCRIPT), "--readme", str(readme), "--table", str(tables / "main.md")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = readme.read_text()
    assert "<!-- results:verdict:start -->\n| verdict row |\n<!-- results:verdict:end -->" in text
    assert "<!-- results:readings:start -->\n| readings row |\n<!-- results:readings:end -->" in text
    assert "old" not in text
