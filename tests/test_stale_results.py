"""Attack documents left on disk by an earlier params.yaml (fewer seeds, a defense removed: DVC does not delete
the outputs of stages that no longer exist) stay out of the tables, the figures, the verdict and the timings
when the readers are given the current runs (``Params.attack_runs()``), and are named where they are left out."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_report import ARCHS, DEFENSES, write_synthetic_results
from test_verdict import _doc, _write_layout

from eatlib import plots, report
from eatlib.report import ResultsError, stale_documents
from eatlib.verdict import load_documents, write_verdict

SEED0 = {(arch, defense, 0) for arch in ARCHS for defense in DEFENSES}   # the params now: one seed


def _corrupt(root: Path, arch: str = "resnet", defense: str = "trades", seed: int = 0) -> Path:
    """A stale document of a defense since removed from params.yaml, half written: not JSON at all."""
    path = root / "metrics" / arch / defense / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"arch": "resnet", "defense": "trades", "clean": {')
    return path


@pytest.fixture
def two_seeds(tmp_path):
    """Synthetic documents of seeds 0 and 1 (every arch x defense) plus a corrupt stale one."""
    root = tmp_path / "results"
    written = write_synthetic_results(root, seeds=(0, 1))
    return root, written, _corrupt(root)


# ------------------------------------------------------------------------------------------------------- the report

def test_stale_documents_names_the_other_seed_and_the_removed_defense_from_their_paths(two_seeds):
    root, _, corrupt = two_seeds
    stale = stale_documents(root, SEED0)
    expected = sorted([root / "metrics" / arch / defense / "seed1.json" for arch in ARCHS for defense in DEFENSES]
                      + [corrupt])
    assert stale == expected
    assert stale_documents(root, SEED0 | {("resnet", "trades", 0)}) == [p for p in expected if p != corrupt]


def test_load_metrics_with_runs_leaves_stale_documents_out_unread(two_seeds):
    root, written, _ = two_seeds
    with pytest.raises(ResultsError, match="cannot read it as JSON"):
        report.load_metrics(root)   # without runs: every file, as before (the corrupt one breaks it)
    runs = report.load_metrics(root, runs=SEED0)
    assert {(run.arch, run.defense, run.seed) for run in runs} == SEED0
    assert all(run.data == written[(run.arch, run.defense)][0] for run in runs)
    groups = report.load_seed_runs(root, runs=SEED0)
    assert {key: [run.seed for run in group] for key, group in groups.items()} == {
        (arch, defense): [0] for arch in ARCHS for defense in DEFENSES}


def test_runs_that_match_nothing_say_how_many_documents_were_left_out(two_seeds):
    root, _, _ = two_seeds
    with pytest.raises(ResultsError, match=r"13 left out, not made by the current params"):
        report.load_metrics(root, runs={("resnet", "eat", 7)})


def test_main_table_and_written_tables_hold_only_the_current_seed(two_seeds):
    root, written, _ = two_seeds
    table = report.main_table(report.load_metrics(root, runs=SEED0))
    assert "trades" not in table.index
    assert (table.xs("seeds", axis=1, level="key") == 1).all().all()
    for arch in ARCHS:
        for defense in DEFENSES:
            seed0 = written[(arch, defense)][0]
            assert table.loc[defense, (arch, "clean", "ami")] == seed0["clean"]["ami"]   # not a mean with seed 1
            assert table.loc[defense, (arch, "worst", "ari")] == seed0["worst"]["ari"]
            assert np.isnan(table.loc[defense, (arch, "clean", "ami_sd")])
    report.write_tables(root, root / "tables", runs=SEED0)
    csv = report.read_csv_table(root / "tables" / "main.csv")
    assert (csv.xs("seeds", axis=1, level=2) == 1).all().all()
    assert csv.loc["eat", ("resnet", "clean", "ami")] == written[("resnet", "eat")][0]["clean"]["ami"]


def test_the_figures_read_only_the_current_runs(two_seeds):
    root, _, _ = two_seeds
    # A defense removed since: its valid, swept seed-0 document must not draw a curve.
    eat = root / "metrics" / "mobilenet" / "eat" / "seed0.json"
    stale = root / "metrics" / "mobilenet" / "iat" / "seed0.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({**json.loads(eat.read_text()), "defense": "iat"}))
    with pytest.raises(ResultsError, match="cannot read it as JSON"):
        plots.write_figures(root, seed=0)
    paths = plots.write_figures(root, seed=0, runs=SEED0)
    curves = pd.read_csv(root / "figures" / "eps_curves.csv")
    assert set(curves["defense"]) == set(DEFENSES)
    assert (root / "figures" / "robustness_eps.png") in paths
    plots.write_eps_curves_csv(root, root / "wide.csv", seed=0, wide=True, runs=SEED0)
    assert not [c for c in pd.read_csv(root / "wide.csv").columns if c.endswith(("/iat", "/trades"))]


# ------------------------------------------------------------------------------------------------------ the verdict

@pytest.fixture
def verdict_layout(tmp_path):
    """EAT ahead of PGD-AT by 0.10 at seed 0; seed 1 (since dropped from params) has EAT behind by 0.20, so
    reading it would flip the verdict; plus a corrupt document of a removed defense."""
    docs = [_doc("resnet", "eat", 0, 0.40), _doc("resnet", "pgd_at", 0, 0.30),
            _doc("resnet", "eat", 1, 0.10), _doc("resnet", "pgd_at", 1, 0.30)]
    _write_layout(tmp_path, docs)
    corrupt = _corrupt(tmp_path, "resnet", "iat")
    return tmp_path, corrupt


RUNS = {("resnet", "eat", 0), ("resnet", "pgd_at", 0), ("resnet", "pgd_at_matched", 0), ("resnet", "standard", 0)}


def test_load_documents_with_runs_leaves_stale_documents_out_unread(verdict_layout):
    root, _ = verdict_layout
    with pytest.raises(ResultsError, match="cannot read it as JSON"):
        load_documents(root)
    documents = load_documents(root, runs=RUNS)
    assert sorted((d["defense"], d["seed"]) for d in documents) == [("eat", 0), ("pgd_at", 0)]
    with pytest.raises(ResultsError, match="5 left out"):
        load_documents(root, runs=set())


def test_the_verdict_is_of_the_current_seeds_and_its_notes_name_the_stale_documents(verdict_layout):
    root, corrupt = verdict_layout
    write_verdict(root, archs=["resnet"], runs=RUNS)
    entry = json.loads((root / "verdict.json").read_text())["resnet"]["eat_vs_pgd_at"]
    assert entry["seeds"] == 1 and [row["seed"] for row in entry["ami"]["per_seed"]] == [0]
    assert entry["diff_mean"] == pytest.approx(0.10, abs=1e-6)
    table = (root / "tables" / "verdict.md").read_text()
    notes = table.split("Notes:")[1].splitlines()
    stale = [root / "metrics" / "resnet" / d / "seed1.json" for d in ("eat", "pgd_at")]
    assert notes[1] == ("- left out 3 documents not in params.yaml (stale from an earlier run): "
                        + ", ".join(map(str, sorted([corrupt, *stale]))))
    assert "seeds [1]" not in table   # seed 1 is not even an unpaired seed: it is not read


def test_the_verdict_without_stale_documents_has_no_such_note(verdict_layout):
    root, corrupt = verdict_layout
    corrupt.unlink()
    runs = RUNS | {("resnet", "eat", 1), ("resnet", "pgd_at", 1)}
    write_verdict(root, archs=["resnet"], runs=runs)
    assert "left out" not in (root / "tables" / "verdict.md").read_text()
    assert json.loads((root / "verdict.json").read_text())["resnet"]["eat_vs_pgd_at"]["seeds"] == 2


# ----------------------------------------------------------------------------------------------- the report stage

def _params(tmp_path: Path):
    from eatlib.load import load_params

    params = {
        "seed": 0, "device": "cpu",
        "data": {"name": "glyphs", "prepared": str(tmp_path / "prepared"), "image_size": 16,
                 "options": {"num_classes": 12, "images_per_class": 8}},
        "models": {arch: {"arch": "cnn4", "embedding_dim": 16, "options": {"width": 4}} for arch in ARCHS},
        "pipeline": {"archs": list(ARCHS), "seeds": [0], "compared": ["standard", "pgd_at", "eat"]},
        "attacks": {"headline": {"name": "fgsm", "optimizer": "fgsm", "eps": "8/255", "objective": "embedding_shift"}},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return load_params(path)


def test_the_report_stage_tabulates_and_times_only_what_params_makes(two_seeds, tmp_path, monkeypatch, capsys):
    from eatlib import pipeline

    root, _, corrupt = two_seeds
    for path in [*(root / "metrics").glob("*/*/seed*.json"), *(root / "ablation").glob("*.json")]:
        if path != corrupt:  # the stages record their wall time
            path.write_text(json.dumps({**json.loads(path.read_text()), "seconds": 5.0}))
    params = _params(tmp_path)
    assert params.attack_runs() >= SEED0
    prepared = Path(params.data.prepared)
    prepared.mkdir()
    (prepared / "summary.json").write_text(json.dumps({"seconds": 1.0}))
    (prepared / "contact_sheet.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "figures").mkdir(exist_ok=True)
    # No checkpoints here: the training curves are another test's business.
    monkeypatch.setattr(pipeline, "load_history", lambda path: [])
    monkeypatch.setattr(pipeline, "plot_training_curves", lambda histories, path: None)
    monkeypatch.setattr(pipeline, "write_training_curves_csv", lambda curves, path: None)

    outputs = pipeline.report(params, root, tsne_defenses=())
    assert outputs["stale"] == stale_documents(root, params.attack_runs()) and corrupt in outputs["stale"]
    assert f"left out {len(outputs['stale'])} attack documents not in params.yaml" in capsys.readouterr().out
    attacks = {key for key in outputs["timings"] if key.startswith("attack/")}
    assert attacks == {f"attack/{arch}/{defense}/seed0" for arch, defense, _ in SEED0}
    csv = report.read_csv_table(root / "tables" / "main.csv")
    assert (csv.xs("seeds", axis=1, level=2) == 1).all().all()


def test_an_ablation_variant_no_longer_in_params_is_never_read(tmp_path):
    from eatlib.report import load_ablation

    (tmp_path / "ablation").mkdir()
    (tmp_path / "ablation" / "removed_variant.json").write_text("{not json")
    with pytest.raises(ResultsError):
        load_ablation(tmp_path)
    assert load_ablation(tmp_path, variants=["eat_aggregate_mean"]) == []
