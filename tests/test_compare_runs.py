"""scripts/compare_runs.py: every score's movement between a committed run and the working tree's, costs left out."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_runs.py"
spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)

RESNET_EAT = {"ami": 0.646, "ari": 0.474, "ami_min": 0.286, "train_min": 2.52, "fb_images": 252000, "attack_s": 218}


def test_only_scores_are_compared_and_the_largest_move_is_found_per_family():
    before = {"resnet/eat/seed0.json": RESNET_EAT,
              "mobilenet/eat/seed0.json": {"ami": 0.5, "ari": 0.3},
              "mobilenet/pgd_at/seed0.json": {"ami": 0.4, "ari": 0.2}}
    after = {"resnet/eat/seed0.json": {**RESNET_EAT, "train_min": 9.0, "attack_s": 1},  # only costs moved
             "mobilenet/eat/seed0.json": {"ami": 0.49, "ari": 0.32},
             "mobilenet/pgd_at/seed0.json": {"ami": 0.4, "ari": 0.2}}
    result = compare_runs.compare(before, after)
    assert {score for run, score, *_ in result["rows"] if run.startswith("resnet")} == {"ami", "ari", "ami_min"}
    assert all(delta == 0 for run, _, _, _, delta in result["rows"] if run.startswith("resnet"))
    delta, run, score = result["max_abs"]["mobilenet"]
    assert (run, score) == ("mobilenet/eat/seed0.json", "ari") and delta == pytest.approx(0.02)
    report = compare_runs.markdown(result, tolerance=0.005)
    assert report.startswith("2 of 7 scores moved by more than 0.005.")
    assert "| mobilenet/eat/seed0 | ami | 0.5000 | 0.4900 | -0.0100 |" in report
    assert "resnet: largest change +0.0000" in report
    assert "| mobilenet/eat/seed0 | 2 of 2 | 0.0200 |" in report and "| resnet/eat/seed0 | 0 of 3 | 0.0000 |" in report


def test_nested_documents_are_flattened_at_full_precision_without_their_times():
    before = {"resnet/eat/seed0.json": {"clean": {"ami": 0.6461234}, "attacks": {"pgd": {"ami": 0.3}},
                                        "sweep": {"metrics": [{"ami": 0.2}, {"ami": 0.1}]},
                                        "timing": {"pgd": {"seconds": 3.0}}, "seconds": 9.0, "protocol": "strong"}}
    after = {"resnet/eat/seed0.json": {**before["resnet/eat/seed0.json"], "clean": {"ami": 0.6461235},
                                       "timing": {"pgd": {"seconds": 4.0}}, "seconds": 8.0}}
    result = compare_runs.compare(before, after)
    assert [row[1] for row in result["rows"]] == ["attacks/pgd/ami", "clean/ami", "sweep/metrics/0/ami",
                                                  "sweep/metrics/1/ami"]
    moved = [row for row in result["rows"] if row[4] != 0]
    assert [row[1] for row in moved] == ["clean/ami"]
    assert "+1.0e-07" in compare_runs.markdown(result)


def test_runs_on_one_side_only_are_named():
    result = compare_runs.compare({"resnet/eat/seed0.json": RESNET_EAT, "resnet/eat/seed1.json": RESNET_EAT},
                                  {"resnet/eat/seed0.json": RESNET_EAT, "resnet/iat/seed0.json": RESNET_EAT})
    assert result["only_before"] == ["resnet/eat/seed1.json"] and result["only_after"] == ["resnet/iat/seed0.json"]
    assert "(no score moved)" in compare_runs.markdown(result)


def _commit_summaries(repo: Path, documents: dict[str, dict]) -> None:
    for run, document in documents.items():
        path = repo / compare_runs.SUMMARIES / run
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "run"], check=True)


def test_a_committed_revision_is_read_back_and_a_bad_one_is_refused(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    _commit_summaries(tmp_path, {"resnet/eat/seed0.json": RESNET_EAT})
    (tmp_path / compare_runs.SUMMARIES / "resnet/eat/seed0.json").write_text(json.dumps({**RESNET_EAT, "ami": 0.6}))
    result = compare_runs.compare(compare_runs.read_revision("HEAD", tmp_path), compare_runs.read_tree(tmp_path))
    assert [row[:2] for row in result["rows"] if row[4] != 0] == [("resnet/eat/seed0.json", "ami")]
    with pytest.raises(compare_runs.CompareError, match="pass a commit"):
        compare_runs.read_revision("no-such-rev", tmp_path)
    with pytest.raises(compare_runs.CompareError, match="make repro"):
        compare_runs.read_tree(tmp_path / "elsewhere")
