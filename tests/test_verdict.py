"""The verdict statistics on synthetic attack documents whose answer is known by construction."""

import json
import zlib

import numpy as np
import pytest
from scipy import stats

from eatlib import html_report, verdict
from eatlib.noise import evaluation_noise
from eatlib.report import ResultsError
from eatlib.verdict import (
    compare,
    eval_interval,
    load_documents,
    markdown_table,
    paired_summary,
    reading,
    seed_interval,
    seeds_needed,
    write_verdict,
)

B = 50   # bootstrap replicates in the synthetic documents


def _noise(value: float, seed: int, rng, sd: float = 0.005) -> dict:
    """A NOISE dict whose replicates scatter around ``value``; the draw-by-draw part is shared via ``rng``'s seed."""
    shared = np.random.default_rng(1000 + seed).normal(scale=sd, size=B)   # same class draws: same shift
    own = rng.normal(scale=sd / 2, size=B)
    reps = {m: list(value + shared + own) for m in ("ami", "ari")}
    return {"seed": seed, "labels_crc": 7, "bootstrap": {"replicates": B, **reps}}


def _doc(arch: str, defense: str, seed: int, worst: float, *, clean: float = 0.6, rng=None, members=None) -> dict:
    rng = rng or np.random.default_rng([seed, zlib.crc32(defense.encode())])
    scores = lambda v: {"ami": v, "ari": v - 0.1}   # noqa: E731
    doc = {
        "arch": arch, "defense": defense, "seed": seed,
        "clean": scores(clean), "worst": scores(worst), "headline": "pgd", "attacks": {"pgd": scores(worst + 0.05)},
        "noise": {"clean": _noise(clean, seed, rng), "worst": _noise(worst, seed, rng)},
        "headline_noise": _noise(worst + 0.05, seed, rng),
    }
    for noise in (doc["noise"]["clean"], doc["noise"]["worst"], doc["headline_noise"]):
        noise["bootstrap"]["ari"] = [v - 0.1 for v in noise["bootstrap"]["ari"]]
    if members is not None:
        doc["members"] = {str(i): {"headline": scores(v), "noise": {"headline": _noise(v, seed, rng)}}
                          for i, v in enumerate(members)}
        for member in doc["members"].values():
            reps = member["noise"]["headline"]["bootstrap"]
            reps["ari"] = [v - 0.1 for v in reps["ari"]]
    return doc


def _docs(eat: list[float], rival: list[float], rival_name: str = "pgd_at", arch: str = "resnet") -> list[dict]:
    return ([_doc(arch, "eat", s, v) for s, v in enumerate(eat)]
            + [_doc(arch, rival_name, s, v) for s, v in enumerate(rival)])


# ------------------------------------------------------------------------------------------------ the statistics

def test_a_clear_difference_reads_ahead():
    result = verdict.verdict(_docs([0.40, 0.42, 0.41], [0.30, 0.31, 0.30]))
    entry = result["resnet"]["eat_vs_pgd_at"]
    assert entry["reading"] == "ahead"
    assert entry["diff_mean"] == pytest.approx(np.mean([0.10, 0.11, 0.11]), abs=1e-6)
    assert entry["ci95"][0] > 0 and entry["eval_ci95"][0] > 0
    assert entry["seeds"] == 3 and entry["ci95_over"] == "seeds"
    assert entry["ari"]["reading"] == "ahead"
    assert [row["diff"] for row in entry["ami"]["per_seed"]] == pytest.approx([0.10, 0.11, 0.11], abs=1e-6)


def test_a_clear_negative_difference_reads_behind():
    entry = verdict.verdict(_docs([0.20, 0.21, 0.19], [0.30, 0.31, 0.30]))["resnet"]["eat_vs_pgd_at"]
    assert entry["reading"] == "behind"
    assert entry["ci95"][1] < 0 and entry["eval_ci95"][1] < 0


def test_a_difference_inside_the_seed_spread_reads_indistinguishable_and_says_how_many_seeds_it_needs():
    eat, rival = [0.35, 0.26, 0.32], [0.30, 0.30, 0.30]   # diffs +0.05, -0.04, +0.02: mean 0.01, sd 0.046
    entry = verdict.verdict(_docs(eat, rival))["resnet"]["eat_vs_pgd_at"]
    assert entry["reading"] == "indistinguishable"
    assert entry["ci95"][0] < 0 < entry["ci95"][1]
    sd = np.std([0.05, -0.04, 0.02], ddof=1)
    n = entry["seeds_needed"]
    assert stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) < 0.02 <= stats.t.ppf(0.975, n - 2) * sd / np.sqrt(n - 1)


def test_both_intervals_must_clear_zero():
    # Seeds agree on +0.01 but the evaluation noise alone spans zero: not a verdict either way.
    diffs_reps = np.random.default_rng(0).normal(0.01, 0.05, size=(3, 200))
    assert seed_interval([0.010, 0.011, 0.012])[0] > 0
    assert eval_interval(diffs_reps)[0] < 0
    assert reading(seed_interval([0.010, 0.011, 0.012]), eval_interval(diffs_reps)) == "indistinguishable"
    assert reading((0.01, 0.02), (-0.01, 0.03)) == "indistinguishable"
    assert reading((-0.03, -0.01), (-0.02, -0.001)) == "behind"


def test_seed_interval_is_the_t_interval():
    diffs = [0.1, 0.3, 0.2, 0.4]
    low, high = seed_interval(diffs)
    half = stats.t.ppf(0.975, 3) * np.std(diffs, ddof=1) / 2
    assert (low, high) == pytest.approx((0.25 - half, 0.25 + half))
    assert seed_interval([0.1]) is None


def test_eval_interval_averages_seeds_per_replicate_then_takes_percentiles():
    reps = np.array([np.arange(101.0), np.arange(101.0) + 2])   # seed-mean of replicate b is b + 1
    assert eval_interval(reps) == pytest.approx((3.5, 98.5))


def test_seeds_needed():
    # t_{n-1, 0.975} / sqrt(n) < 1 first at n = 7 (t_5 / sqrt(6) = 1.050, t_6 / sqrt(7) = 0.925).
    assert seeds_needed(0.02) == 7
    assert seeds_needed(0.0) == 2
    assert seeds_needed(1.0) is None                 # beyond the cap
    assert seeds_needed(1.0, cap=10_000) > 1000
    with pytest.raises(ValueError, match="sd"):
        seeds_needed(float("nan"))


def test_one_seed_reads_from_the_evaluation_interval_alone():
    entry = verdict.verdict(_docs([0.40], [0.30]))["resnet"]["eat_vs_pgd_at"]
    assert entry["seeds"] == 1 and entry["ci95_over"] == "evaluation"
    assert entry["ci95"] == entry["eval_ci95"]
    assert entry["reading"] == "ahead"
    assert entry["seeds_needed"] is None
    assert "one seed" in entry["ami"]["notes"][0]


def test_paired_summary_checks_shapes():
    with pytest.raises(ValueError, match="one score per seed"):
        paired_summary([0.1, 0.2], [0.1], np.zeros((2, 3)), np.zeros((1, 3)), metric="ami")
    with pytest.raises(ValueError, match="replicates"):
        paired_summary([0.1], [0.1], np.zeros((1, 3)), np.zeros((1, 4)), metric="ami")


# ------------------------------------------------------------------------------------------------ the comparisons

def test_every_comparison_from_a_full_set_of_documents():
    docs = []
    for seed in range(3):
        docs.append(_doc("resnet", "eat", seed, 0.40 + 0.01 * seed, clean=0.58, members=[0.20, 0.33 + 0.01 * seed]))
        docs += [_doc("resnet", d, seed, v) for d, v in
                 (("pgd_at", 0.30), ("trades", 0.41 - 0.01 * seed), ("iat", 0.20), ("pgd_at_matched", 0.35))]
        docs.append(_doc("resnet", "standard", seed, 0.01, clean=0.70))
    docs.append(_doc("resnet", "adp", 0, 0.1))   # single seed, not compared
    result, notes = compare(docs, archs=["resnet"])
    got = {name: e["reading"] for name, e in result["resnet"].items()}
    assert got == {"eat_vs_pgd_at": "ahead", "eat_vs_trades": "indistinguishable", "eat_vs_iat": "ahead",
                   "eat_vs_pgd_at_matched": "ahead", "eat_vs_best_member": "ahead",
                   "eat_clean_vs_standard": "behind"}
    best = result["resnet"]["eat_vs_best_member"]
    assert [row["member"] for row in best["ami"]["per_seed"]] == ["1", "1", "1"]
    # EAT's headline (worst + 0.05) minus the best member's headline AMI (0.33 + 0.01 seed): 0.12 every seed
    assert best["diff_mean"] == pytest.approx(0.12, abs=1e-6)
    assert result["resnet"]["eat_clean_vs_standard"]["diff_mean"] == pytest.approx(-0.12, abs=1e-6)
    assert notes == []


def test_missing_pieces_are_skipped_with_a_note():
    docs = _docs([0.4, 0.4, 0.4], [0.3, 0.3])   # pgd_at lacks seed 2; no trades/iat/...; no members
    del docs[0]["headline_noise"]
    result, notes = compare(docs)
    assert result["resnet"]["eat_vs_pgd_at"]["seeds"] == 2
    text = "\n".join(notes)
    assert "eat_vs_pgd_at: seeds [2] have only one side" in text
    assert "eat_vs_trades: skipped, no attack documents for trades" in text
    assert "eat_vs_best_member: seed 0 skipped" in text
    assert "eat_clean_vs_standard: skipped" in text
    assert set(result["resnet"]) == {"eat_vs_pgd_at"}


def test_unpaired_noise_is_noted():
    docs = _docs([0.4, 0.4], [0.3, 0.3])
    docs[2]["noise"]["worst"]["labels_crc"] = 8
    _, notes = compare(docs)
    assert any("not paired" in note for note in notes)


def test_duplicate_documents_are_an_error():
    docs = _docs([0.4], [0.3]) + [_doc("resnet", "eat", 0, 0.5)]
    with pytest.raises(ValueError, match="two attack documents for arch=resnet, defense=eat, seed=0"):
        verdict.verdict(docs)


def test_the_same_model_against_itself_is_indistinguishable_end_to_end():
    """Real evaluation_noise on embeddings: a model against a copy of itself differs by exactly 0."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 5)
    docs = []
    for seed in range(2):
        x = rng.normal(size=(10, 8))[labels] + 0.8 * rng.normal(size=(50, 8))
        noise = evaluation_noise(x, labels, seed=seed, kmeans_seeds=2, bootstrap=20)
        score = {"ami": noise["kmeans"]["ami"]["values"][0], "ari": noise["kmeans"]["ari"]["values"][0]}
        for defense in ("eat", "pgd_at"):
            docs.append({"arch": "cnn4", "defense": defense, "seed": seed, "worst": score, "clean": score,
                         "noise": {"worst": noise, "clean": noise}})
    entry = verdict.verdict(docs)["cnn4"]["eat_vs_pgd_at"]
    assert entry["diff_mean"] == 0 and entry["eval_ci95"] == [0, 0]
    assert entry["reading"] == "indistinguishable"


# ------------------------------------------------------------------------------------------------ the files

def _write_layout(root, docs):
    for doc in docs:
        path = root / "metrics" / doc["arch"] / doc["defense"] / f"seed{doc['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))


def test_write_verdict_writes_json_table_and_forest_plot_that_the_html_report_reads(tmp_path):
    docs = _docs([0.40, 0.42, 0.41], [0.30, 0.31, 0.30]) + _docs([0.35, 0.26, 0.32], [0.3] * 3, arch="mobilenet")
    _write_layout(tmp_path, docs)
    paths = write_verdict(tmp_path, archs=["resnet", "mobilenet"])
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "verdict.json", "tables/verdict.md", "figures/verdict.png"]
    loaded = html_report.load_verdict(tmp_path / "verdict.json")   # the report's own schema check
    assert list(loaded) == ["resnet", "mobilenet"]
    assert loaded["mobilenet"]["eat_vs_pgd_at"]["reading"] == "indistinguishable"
    table = (tmp_path / "tables" / "verdict.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| resnet") or line.startswith("| mobilenet")]
    assert len(rows) == 4   # 2 archs x 1 comparison x (AMI, ARI)
    assert "| resnet | EAT vs PGD-AT (equal epochs) | AMI | +0.107 |" in table
    assert "both intervals lie above 0" in table and "eat_vs_trades: skipped" in table
    assert rows[2].split("|")[-2].strip().isdigit()   # seeds needed, shown where indistinguishable
    assert (tmp_path / "figures" / "verdict.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_verdict_can_put_table_and_figure_in_the_stage_folder(tmp_path):
    _write_layout(tmp_path, _docs([0.4, 0.42], [0.3, 0.3]))
    paths = write_verdict(tmp_path, out_dir=tmp_path / "verdict")
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "verdict.json", "verdict/verdict.md", "verdict/verdict.png"]
    assert all(p.exists() for p in paths) and not (tmp_path / "tables").exists()


def test_load_documents_checks_the_seed_against_the_file_name(tmp_path):
    doc = _doc("resnet", "eat", 1, 0.4)
    _write_layout(tmp_path, [doc])
    assert load_documents(tmp_path)[0]["seed"] == 1
    (tmp_path / "metrics" / "resnet" / "eat" / "seed2.json").write_text(json.dumps(doc))
    with pytest.raises(ResultsError, match="file name says 2"):
        load_documents(tmp_path)
    with pytest.raises(ResultsError, match="no attack documents"):
        load_documents(tmp_path / "empty")


def test_markdown_marks_one_seed_rows():
    result = verdict.verdict(_docs([0.4], [0.3]))
    assert "— (1 seed)" in markdown_table(result)


def test_the_evaluation_interval_is_centred_on_the_observed_difference_not_on_the_replicates_drift():
    from eatlib.verdict import paired_summary

    rng = np.random.default_rng(0)
    # Replicates of A drift up by 0.05 more than B's (duplicated classes flatter a better clustering): the
    # replicate differences centre on +0.05 although the observed difference is 0.
    a_rep = 0.55 + rng.normal(0, 0.01, (3, 200))
    b_rep = 0.50 + rng.normal(0, 0.01, (3, 200))
    entry = paired_summary([0.5, 0.5, 0.5], [0.5, 0.5, 0.5], a_rep, b_rep, metric="ami")
    low, high = entry["eval_ci95"]
    assert low < 0 < high and high - low < 0.01 * 2 * 4
