"""Tables from synthetic results JSON (several training seeds per defense): rows, columns, means and sds over
seeds, round-trip of the numbers, LaTeX hygiene, clear errors."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eatlib import layout, report

ARCHS = ("resnet", "mobilenet")
DEFENSES = ("eat", "standard", "pgd_at")          # deliberately not in canonical order
METRICS = ("nmi", "ami", "ari", "f1", "purity", "recall@1")
SWEEP_EPS = [1 / 255, 2 / 255, 4 / 255, 8 / 255]
ATTACKS = ("pgd20_centroid", "fgsm_shift")
SEEDS = (0, 1, 2)         # training seeds of every synthetic defense; 0 is the main seed (the only one with a sweep)


def _scores(rng) -> dict:
    return {key: float(rng.uniform(0.1, 0.95)) for key in METRICS}


def _result(rng, arch: str, defense: str, *, members: int = 0, seed: int = 0) -> dict:
    attacks = {}
    for attack in ATTACKS:
        eps = 8 / 255 if attack.startswith("pgd") else 4 / 255
        attacks[attack] = _scores(rng) | {"spec": {"eps": eps, "norm": "linf", "steps": 20}}
    worst = {key: min(attacks[a][key] for a in ATTACKS) for key in METRICS}
    result = {
        "arch": arch,
        "defense": defense,
        "seed": seed,
        "clean": _scores(rng) | {"recall@2": 0.99},
        "attacks": attacks,
        "worst": worst,
        "headline": "pgd20_centroid",
        "sweep": {"attack": "pgd20_centroid", "eps": SWEEP_EPS,
                  "metrics": [_scores(rng) for _ in SWEEP_EPS]} if seed == 0 else None,
        "cost": {"train_seconds": float(rng.uniform(60, 3000)),
                 "forward_backward_images": int(rng.integers(1e5, 1e8)), "epochs": 24},
        "subset": {"images": 3000, "classes": 50, "seed": 0},
        "config": {"lr": 1e-3},
    }
    if result["sweep"] is None:
        del result["sweep"]
    if members:
        result["members"] = {str(m): {"clean": _scores(rng), "headline": _scores(rng)} for m in range(members)}
    return result


def write_run(root: Path, result: dict) -> Path:
    """Write one attack document where the attack stage puts it (``metrics/<arch>/<defense>/seed<k>.json``)."""
    path = layout.metrics_path(result["arch"], result["defense"], root, result["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return path


def write_synthetic_results(root: Path, seed: int = 0, seeds=SEEDS) -> dict[tuple[str, str], list[dict]]:
    """Two archs x three defenses x ``seeds`` (eat with 3 members) under ``root/metrics`` and two ablation variants
    under ``root/ablation``; returns the main results keyed by (arch, defense) (a list, one per seed), plus
    ("ablation", stem) entries (one document each)."""
    rng = np.random.default_rng(seed)
    written = {}
    for arch in ARCHS:
        for defense in DEFENSES:
            written[(arch, defense)] = []
            for training_seed in seeds:
                result = _result(rng, arch, defense, members=3 if defense == "eat" else 0, seed=training_seed)
                write_run(root, result)
                written[(arch, defense)].append(result)
    # As the pipeline writes them: the variant names its defense.
    for stem, variant in (("members_5", {"defense": "eat", "members": 5, "split": "holdout_one"}),
                          ("split_disjoint", {"defense": "eat", "split": "disjoint"})):
        result = _result(rng, "resnet", "eat") | {"variant": variant}
        path = root / "ablation" / f"{stem}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
        written[("ablation", stem)] = result
    return written


@pytest.fixture
def results(tmp_path):
    return tmp_path / "results", write_synthetic_results(tmp_path / "results")


EXPECTED_ROWS = ["standard", "pgd_at", "eat", "eat (member 1)", "eat (member 2)", "eat (member 3)"]


def test_main_table_has_the_expected_rows_and_columns(results):
    root, _ = results
    table = report.main_table(report.load_metrics(root))
    assert list(table.index) == EXPECTED_ROWS
    per_arch = [("clean", k) for k in ("nmi", "ami", "ami_sd", "ari", "ari_sd", "f1", "recall@1")]
    per_arch += [("robust", k) for k in ("nmi", "ami", "ari", "f1", "recall@1")]
    per_arch += [("worst", "ami"), ("worst", "ami_sd"), ("worst", "ari"), ("worst", "ari_sd")]
    per_arch += [("cost", "train_minutes"), ("cost", "fb_images_millions"), ("run", "seeds")]
    assert list(table.columns) == [(arch, *c) for arch in sorted(ARCHS) for c in per_arch]
    assert (table.xs("seeds", axis=1, level="key") == len(SEEDS)).all().all()


def _mean(values) -> float:
    return float(np.mean(values))


def _sd(values) -> float:
    return float(np.std(values, ddof=1))


def test_written_tables_round_trip_the_means_and_sds_over_seeds(results):
    root, written = results
    out = root / "tables"
    paths = report.write_tables(root, out)
    assert sorted(p.name for p in paths) == sorted(
        f"{name}.{ext}" for name in ("main", "ablation") for ext in ("md", "tex", "csv"))
    table = report.read_csv_table(out / "main.csv")
    assert list(table.index) == EXPECTED_ROWS
    for (arch, defense), docs in written.items():
        if arch == "ablation":
            continue
        row = table.loc[defense]
        for key in ("nmi", "ami", "ari", "f1", "recall@1"):
            assert row[(arch, "clean", key)] == pytest.approx(_mean([d["clean"][key] for d in docs]), rel=1e-12)
            robust = [d["attacks"][d["headline"]][key] for d in docs]
            assert row[(arch, "robust", key)] == pytest.approx(_mean(robust), rel=1e-12)
        for key in ("ami", "ari"):
            assert row[(arch, "worst", key)] == pytest.approx(_mean([d["worst"][key] for d in docs]), rel=1e-12)
            assert row[(arch, "worst", f"{key}_sd")] == pytest.approx(_sd([d["worst"][key] for d in docs]))
            assert row[(arch, "clean", f"{key}_sd")] == pytest.approx(_sd([d["clean"][key] for d in docs]))
        assert row[(arch, "cost", "train_minutes")] == pytest.approx(_mean([d["cost"]["train_seconds"] / 60
                                                                            for d in docs]))
        assert row[(arch, "cost", "fb_images_millions")] == pytest.approx(
            _mean([d["cost"]["forward_backward_images"] / 1e6 for d in docs]))
        assert row[(arch, "run", "seeds")] == len(SEEDS)
        for index in docs[0].get("members", {}):
            member_row = table.loc[f"{defense} (member {int(index) + 1})"]
            assert member_row[(arch, "robust", "ari")] == pytest.approx(
                _mean([d["members"][index]["headline"]["ari"] for d in docs]), rel=1e-12)
            assert member_row[(arch, "clean", "nmi")] == pytest.approx(
                _mean([d["members"][index]["clean"]["nmi"] for d in docs]), rel=1e-12)
            assert np.isnan(member_row[(arch, "cost", "train_minutes")])


def test_markdown_shows_mean_plus_minus_sd_and_a_single_seed_row_without_one(results):
    root, written = results
    write_run(root, _result(np.random.default_rng(7), "resnet", "adp", seed=0))   # a single-seed defense
    report.write_tables(root, root / "tables")
    text = (root / "tables" / "main.md").read_text().split("**resnet**")[1]
    docs = written[("resnet", "pgd_at")]
    worst = [d["worst"]["ami"] for d in docs]
    pgd_at = next(line for line in text.splitlines() if line.startswith("| pgd_at |"))
    assert f"{_mean(worst):.3f} ± {_sd(worst):.3f}" in pgd_at and pgd_at.rstrip(" |").endswith("| 3")
    adp = next(line for line in text.splitlines() if line.startswith("| adp |"))
    assert "±" not in adp and adp.rstrip(" |").endswith("| 1")
    header = next(line for line in text.splitlines() if line.startswith("| defense"))
    assert header.rstrip(" |").endswith("| seeds") and "_sd" not in header
    assert r"$\pm$" in (root / "tables" / "main.tex").read_text()


def test_pgd_at_matched_follows_pgd_at_under_its_label(results):
    root, _ = results
    for training_seed in SEEDS:
        write_run(root, _result(np.random.default_rng(training_seed), "resnet", "pgd_at_matched", seed=training_seed))
    table = report.main_table(report.load_metrics(root))
    assert list(table.index[:3]) == ["standard", "pgd_at", "pgd_at_matched"]
    text = report.markdown_table(table)
    assert "| PGD-AT (EAT's compute) |" in text and "| pgd_at_matched |" not in text
    assert "PGD-AT (EAT's compute)" in report.latex_table(table)


def test_load_seed_runs_groups_each_defense_by_seed(results):
    root, _ = results
    groups = report.load_seed_runs(root)
    assert sorted(groups) == sorted((arch, defense) for arch in ARCHS for defense in DEFENSES)
    assert all([run.seed for run in runs] == list(SEEDS) for runs in groups.values())
    main = report.runs_of_seed(report.load_metrics(root), 0)
    assert len(main) == len(ARCHS) * len(DEFENSES) and all("sweep" in run.data for run in main)


def test_old_layout_and_misplaced_documents_are_clear_errors(results):
    root, written = results
    old = root / "metrics" / "resnet" / "eat.json"
    old.write_text(json.dumps(written[("resnet", "eat")][0]))
    with pytest.raises(report.ResultsError, match=r"eat\.json: a file of the old one-seed layout.*seed<k>\.json"):
        report.load_metrics(root)
    old.unlink()
    wrong_seed = root / "metrics" / "resnet" / "eat" / "seed7.json"
    wrong_seed.write_text(json.dumps(written[("resnet", "eat")][1]))
    with pytest.raises(report.ResultsError, match=r"seed7\.json: the document says seed 1 but the file is named for"):
        report.load_metrics(root)
    wrong_seed.unlink()
    misplaced = root / "metrics" / "resnet" / "trades" / "seed0.json"
    misplaced.parent.mkdir()
    misplaced.write_text(json.dumps(written[("resnet", "eat")][0]))
    with pytest.raises(report.ResultsError, match=r"the document is resnet/eat but its folder says resnet/trades"):
        report.load_metrics(root)


def test_ablation_table_rows_params_and_numbers(results):
    root, written = results
    report.write_tables(root, root / "tables")
    table = report.read_csv_table(root / "tables" / "ablation.csv")
    assert list(table.index) == ["members_5", "split_disjoint"]
    assert list(table["variant"].columns) == ["defense", "arch", "members", "split"]
    assert table.loc["members_5", ("variant", "members")] == 5
    assert np.isnan(table.loc["split_disjoint", ("variant", "members")])   # not set by that variant
    assert table.loc["split_disjoint", ("variant", "split")] == "disjoint"
    data = written[("ablation", "split_disjoint")]
    assert table.loc["split_disjoint", ("robust", "ami")] == pytest.approx(data["attacks"]["pgd20_centroid"]["ami"])
    assert table.loc["split_disjoint", ("worst", "ari")] == pytest.approx(data["worst"]["ari"])


def test_markdown_has_caption_one_pipe_table_per_arch_and_rounded_numbers(results):
    root, written = results
    report.write_tables(root, root / "tables")
    text = (root / "tables" / "main.md").read_text()
    assert "pgd20_centroid (eps=8/255" in text and "3000 test images of 50 classes (seed 0)" in text
    for arch in ARCHS:
        assert f"**{arch}**" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| defense")]
    labels = [line.split("|")[1].strip() for line in rows]
    assert labels == [label.replace("eat (m", "&emsp;eat (m") for label in EXPECTED_ROWS] * 2
    header = next(line for line in text.splitlines() if line.startswith("| defense"))
    assert header.count("|") == 1 + 1 + 15   # defense + 15 columns per architecture (sd joins its mean's cell)
    clean_nmi = _mean([d["clean"]["nmi"] for d in written[("mobilenet", "standard")]])
    assert f"{clean_nmi:.3f}" in rows[0]    # mobilenet comes first (sorted), standard first


def test_markdown_bolds_the_best_defense_not_a_member(results):
    root, written = results
    table = report.main_table(report.load_metrics(root))
    worst_ari = {d: _mean([doc["worst"]["ari"] for doc in written[("resnet", d)]]) for d in DEFENSES}
    best = max(worst_ari, key=worst_ari.get)
    text = report.markdown_table(table)
    value = f"**{worst_ari[best]:.3f} ± "
    assert value in text.split("**resnet**")[1]
    assert not any("**" in line for line in text.splitlines() if "member" in line)


def test_latex_escapes_underscores_and_balances_environments(results):
    root, _ = results
    report.write_tables(root, root / "tables")
    for name in ("main", "ablation"):
        tex = (root / "tables" / f"{name}.tex").read_text()
        for env in ("tabular", "table*"):
            assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}") == 1
        assert re.search(r"(?<!\\)_", tex) is None, "unescaped underscore"
        assert r"pgd\_at" in tex or name == "ablation"
        assert r"\toprule" in tex and r"\bottomrule" in tex
        packages = set(re.findall(r"\\(multirow|cmidrule|toprule|midrule|bottomrule)", tex))
        assert packages <= {"multirow", "cmidrule", "toprule", "midrule", "bottomrule"}
        columns = len(re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1))
        body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
        assert all(line.count("&") == columns - 1 for line in body)
    assert r"\quad eat (member 1)" in (root / "tables" / "main.tex").read_text()


def test_missing_key_names_the_file_and_the_key(results):
    root, _ = results
    path = root / "metrics" / "resnet" / "pgd_at" / "seed1.json"
    data = json.loads(path.read_text())
    del data["attacks"]["pgd20_centroid"]["ari"]
    path.write_text(json.dumps(data))
    with pytest.raises(report.ResultsError, match=r"pgd_at/seed1\.json.*'attacks\.pgd20_centroid\.ari'"):
        report.write_tables(root, root / "tables")
    assert not (root / "tables" / "main.md").exists()


def test_missing_top_level_key_and_headline_not_in_suite(results):
    root, _ = results
    path = root / "metrics" / "mobilenet" / "standard" / "seed0.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "worst"}))
    with pytest.raises(report.ResultsError, match=r"standard/seed0\.json.*'worst'"):
        report.load_metrics(root)
    path.write_text(json.dumps(data | {"headline": "cw_l2"}))
    with pytest.raises(report.ResultsError, match=r"standard/seed0\.json.*'attacks\.cw_l2'"):
        report.load_metrics(root)


def test_no_metrics_files_is_a_clear_error(tmp_path):
    with pytest.raises(report.ResultsError, match=r"no metrics files in .*metrics"):
        report.write_tables(tmp_path, tmp_path / "tables")


def test_no_ablation_files_writes_only_the_main_table(results):
    root, _ = results
    for path in (root / "ablation").glob("*.json"):
        path.unlink()
    paths = report.write_tables(root)
    assert sorted(p.name for p in paths) == ["main.csv", "main.md", "main.tex"]
    assert all(p.parent == root / "tables" for p in paths)


def test_unknown_defenses_follow_the_canonical_ones():
    order = report.defense_order(["zeta", "eat", "alpha", "standard", "trades"])
    assert order == ["standard", "trades", "eat", "alpha", "zeta"]


def test_csv_table_is_plain_pandas_csv(results):
    root, _ = results
    report.write_tables(root, root / "tables")
    flat = pd.read_csv(root / "tables" / "main.csv")
    assert flat.columns[0] == "defense"
    assert "resnet.robust.recall@1" in flat.columns


def test_members_may_give_the_headline_scores_under_attacks(results):
    root, written = results
    for training_seed in SEEDS[1:]:   # one seed, so the row shows that seed's numbers
        layout.metrics_path("resnet", "eat", root, training_seed).unlink()
    path = layout.metrics_path("resnet", "eat", root, 0)
    data = json.loads(path.read_text())
    member = data["members"]["1"]
    data["members"]["1"] = {"clean": member["clean"], "attacks": {"pgd20_centroid": member["headline"]},
                            "cost": {"train_seconds": 120.0, "forward_backward_images": 2_000_000}}
    path.write_text(json.dumps(data))
    row = report.main_table(report.load_metrics(root)).loc["eat (member 2)"]
    assert row[("resnet", "robust", "ami")] == pytest.approx(member["headline"]["ami"])
    assert row[("resnet", "cost", "train_minutes")] == pytest.approx(2.0)
    del data["members"]["1"]["attacks"]["pgd20_centroid"]["f1"]
    path.write_text(json.dumps(data))
    with pytest.raises(report.ResultsError, match=r"seed0\.json.*'members\.1\.attacks\.pgd20_centroid\.f1'"):
        report.main_table(report.load_metrics(root))


def test_caption_names_one_headline_and_the_eot_draws_of_randomised_defenses(results):
    root, _ = results
    randomized = _result(np.random.default_rng(1), "resnet", "randomization") | {"randomized": True}
    randomized["attacks"]["pgd20_centroid"]["spec"]["eot"] = 4
    write_run(root, randomized)
    report.write_tables(root, root / "tables")
    caption = (root / "tables" / "main.md").read_text().splitlines()[0]
    assert "differ between runs" not in caption and caption.count("pgd20_centroid (eps=8/255") == 1
    assert "with EOT over 4 draws against randomised defenses" in caption


def test_two_documents_of_one_defense_and_seed_are_an_error(results):
    root, _ = results
    runs = report.load_metrics(root)
    duplicate = report.RunResult(root / "copy.json", runs[0].data, runs[0].seed)
    held = f"{runs[0].arch}/{runs[0].defense} seed {runs[0].seed}"
    with pytest.raises(report.ResultsError, match=rf"copy\.json and .* both hold {held}"):
        report.main_table([*runs, duplicate])
