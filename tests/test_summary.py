"""The compact DVC metrics summary of an attack document (eatlib.summary), on committed results."""

import json
from pathlib import Path

import pytest

from eatlib import layout
from eatlib.summary import SummaryError, summarize, summary_path, write_summary

ROOT = Path(__file__).resolve().parents[1]
# The committed main-seed EAT run.
EAT = layout.metrics_path("resnet", "eat", ROOT / "results", 0)


@pytest.fixture(scope="module")
def document():
    return json.loads(EAT.read_text())


def test_summary_of_the_committed_eat_run_holds_clean_headline_worst_and_cost(document):
    summary = summarize(document)
    assert len(summary) <= 15 and all(isinstance(v, (int, float)) for v in summary.values())
    headline = document["attacks"][document["headline"]]
    assert summary["ami"] == round(document["clean"]["ami"], 3) == 0.636
    assert summary["r@1_atk"] == round(headline["recall@1"], 3) == 0.507
    assert summary["ari_min"] == round(document["worst"]["ari"], 3) == 0.149
    assert summary["r@1_min"] <= summary["r@1_atk"] < summary["r@1"]
    # Scores are pinned; times are not: they change with every run on the same code.
    assert summary["train_min"] == round(document["cost"]["train_seconds"] / 60, 2) > 0
    assert summary["fb_images"] == document["cost"]["forward_backward_images"] == 252000
    assert summary["attack_s"] == round(document["seconds"]) > 0
    assert sorted(summary) == ["ami", "ami_atk", "ami_min", "ari", "ari_atk", "ari_min", "attack_s", "fb_images",
                               "r@1", "r@1_atk", "r@1_min", "train_min"]


def test_committed_summaries_match_their_documents():
    documents = sorted((ROOT / "results/metrics").glob("*/*/seed*.json"))
    documents += sorted((ROOT / "results/ablation").glob("*.json"))
    assert documents
    for path in documents:
        written = summary_path(path, ROOT / "results")
        assert written.is_file(), f"{written} missing: run python -m eatlib.summary on {path}"
        assert json.loads(written.read_text()) == summarize(json.loads(path.read_text())), written


def test_summary_paths_stay_out_of_the_folders_the_report_reads():
    assert summary_path("results/metrics/resnet/eat/seed2.json") == Path("results/summary/resnet/eat/seed2.json")
    assert summary_path(layout.metrics_path("resnet", "eat", seed=2)) == layout.summary_path("resnet", "eat", seed=2)
    assert summary_path("results/ablation/eat_split_none.json") == Path("results/summary/ablation/eat_split_none.json")
    for path in ("results/timings.json", "results/metrics/resnet/eat.json", "results/metrics/resnet/eat/best.json"):
        with pytest.raises(SummaryError, match="not an attack document.*seed<k>.json"):
            summary_path(path)


def test_a_document_missing_its_headline_attack_names_the_key(document):
    broken = {**document, "attacks": {k: v for k, v in document["attacks"].items() if k != document["headline"]}}
    with pytest.raises(SummaryError, match=f"'attacks.{document['headline']}'"):
        summarize(broken)
    without_cost = {k: v for k, v in document.items() if k != "cost"}
    with pytest.raises(SummaryError, match="'cost'"):
        summarize(without_cost)


def test_write_summary_writes_next_to_nothing_the_report_reads(document, tmp_path):
    source = layout.metrics_path("resnet", "eat", tmp_path / "results", 1)
    source.parent.mkdir(parents=True)
    source.write_text(json.dumps(document))
    out = write_summary(source, tmp_path / "results")
    assert out == tmp_path / "results/summary/resnet/eat/seed1.json"
    assert json.loads(out.read_text()) == summarize(document)
    assert sorted(p.name for p in source.parent.iterdir()) == ["seed1.json"]
    elsewhere = write_summary(source, out_path=tmp_path / "other.json")
    assert elsewhere == tmp_path / "other.json" and json.loads(elsewhere.read_text()) == summarize(document)
