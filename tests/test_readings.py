"""Readings of EAT in the verdict: params validation, paired comparisons with the main run, budgets, files."""

import dataclasses
import json

import pytest
import yaml
from test_verdict import _doc

from eatlib import pipeline
from eatlib.layout import reading_matched_metrics_path, reading_matched_model_path
from eatlib.load import load_params
from eatlib.params import ConfigError
from eatlib.readings import OWN_COMPUTE, compare_readings, load_readings, matched_name, write_readings
from eatlib.report import ResultsError


def _with_cost(doc: dict, images: int) -> dict:
    return {**doc, "cost": {"forward_backward_images": images, "train_seconds": 1.0, "epochs": 1}}


def _main(seeds=(0, 1, 2)) -> list[dict]:
    docs = []
    for s in seeds:
        docs += [_with_cost(_doc("resnet", "pgd_at", s, 0.30 + 0.01 * s), 600),
                 _with_cost(_doc("resnet", "eat", s, 0.31 + 0.01 * s, members=[0.33, 0.34, 0.35]), 1000),
                 _with_cost(_doc("resnet", "pgd_at_matched", s, 0.33), 1000),
                 _with_cost(_doc("resnet", "standard", s, 0.05, clean=0.62), 200)]
    return docs


def _reading(name: str, worst: list[float], images: int = 1500) -> list[dict]:
    docs = [_with_cost(_doc("resnet", "eat", s, v, members=[v + 0.02, v + 0.03, v + 0.04]), images)
            for s, v in enumerate(worst)]
    return [{**doc, "defense": name} for doc in docs]


def test_a_reading_clearly_above_pgd_at_reads_ahead_and_its_budget_is_relative_to_eat_and_pgd_at():
    result, notes = compare_readings(_reading("others", [0.45, 0.46, 0.47]), _main(), arch="resnet",
                                     names=["others"])
    entries = result["others"]
    assert entries["vs_pgd_at"]["reading"] == "ahead"
    assert entries["vs_pgd_at"]["diff_mean"] == pytest.approx(0.15, abs=1e-6)
    assert entries["vs_eat"]["diff_mean"] == pytest.approx(0.14, abs=1e-6)
    assert entries["vs_pgd_at"]["a"] == "others" and entries["vs_pgd_at"]["b"] == "pgd_at"
    assert entries["_budget"]["eat"]["mean"] == pytest.approx(1.5)
    assert entries["_budget"]["pgd_at"]["mean"] == pytest.approx(2.5)
    # headline = worst + 0.05 in the synthetic documents, best member = worst + 0.04
    assert entries["vs_best_member"]["diff_mean"] == pytest.approx(0.01, abs=1e-6)
    assert notes == []


def test_a_reading_with_missing_seeds_is_paired_on_the_seeds_it_has_and_the_note_names_the_reading():
    result, notes = compare_readings(_reading("momentum", [0.31, 0.32]), _main(), arch="resnet", names=["momentum"])
    assert result["momentum"]["vs_pgd_at"]["seeds"] == 2
    assert any(note.startswith("momentum vs_pgd_at") and "[2]" in note for note in notes)


def test_main_run_seeds_outside_the_readings_seeds_are_not_rivals_and_raise_no_note():
    result, notes = compare_readings(_reading("others", [0.45, 0.46]), _main(), arch="resnet", names=["others"],
                                     seeds=[0, 1])
    assert result["others"]["vs_pgd_at"]["seeds"] == 2 and notes == []


def test_a_reading_named_like_a_main_defense_is_refused():
    with pytest.raises(ResultsError, match="rename"):
        compare_readings(_reading("pgd_at", [0.3, 0.3, 0.3]), _main(), arch="resnet", names=["pgd_at"])


def test_write_readings_reads_only_the_asked_files_and_writes_json_table_and_figure(tmp_path):
    for doc in _main():
        path = tmp_path / "metrics" / doc["arch"] / doc["defense"] / f"seed{doc['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    for doc in _reading("others", [0.45, 0.46, 0.47]):
        path = tmp_path / "readings" / "metrics" / "resnet" / "others" / f"seed{doc['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**doc, "defense": "eat"}))
    stale = tmp_path / "readings" / "metrics" / "resnet" / "gone" / "seed0.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{not json")   # a reading no longer in params: never read
    assert [d["defense"] for d in load_readings(tmp_path, "resnet", ["others"], [0, 1, 2])] == ["others"] * 3
    js, table, figure = write_readings(tmp_path, arch="resnet", names=["others"], seeds=[0, 1, 2])
    result = json.loads(js.read_text())["resnet"]["others"]
    assert result["vs_pgd_at"]["reading"] == "ahead"
    text = table.read_text()
    assert "| others | vs PGD-AT (equal epochs) | AMI | +0.150 |" in text
    # no PGD-AT at its own compute (not in readings.matched); synthetic documents: 1 s of training, no attack time
    assert "| others | 1.50x | 2.50x | — | 1 | — |" in text
    assert figure.stat().st_size > 10_000


def _params_with(tmp_path, readings: dict):
    params = yaml.safe_load(open("params.yaml"))
    params["readings"] = readings
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_readings_params_are_validated_before_any_work(tmp_path):
    good = load_params(_params_with(tmp_path, {"arch": "resnet", "seeds": [0, 2], "variants": {"x": {"members": 2}}}))
    assert good.reading_options("x").members == 2
    assert good.reading_options("x").transfer == good.defense_options("eat").transfer
    # Seeds or an arch the main run lacks: refused when a reading stage runs, not by `make repro`.
    for readings, key in (({"arch": "resnet", "seeds": [7], "variants": {}}, "readings.seeds"),
                          ({"arch": "resnet", "seeds": [0], "variants": {}}, "readings.arch")):
        params = load_params(_params_with(tmp_path, readings))
        if key == "readings.arch":
            params = dataclasses.replace(params, pipeline=dataclasses.replace(params.pipeline, archs=["mobilenet"]))
        with pytest.raises(ConfigError, match=key):
            params.check_readings()
    with pytest.raises(ConfigError, match="readings.arch"):
        load_params(_params_with(tmp_path, {"arch": "vit", "seeds": [0], "variants": {}}))
    with pytest.raises(ConfigError, match="readings.variants.x"):
        load_params(_params_with(tmp_path, {"arch": "resnet", "seeds": [0], "variants": {"x": {"transfer": "nope"}}}))
    for taken in ("pgd_at", "pgd_at_matched", "randomization", "nan", "5members"):
        with pytest.raises(ConfigError, match="variants"):
            load_params(_params_with(tmp_path, {"arch": "resnet", "seeds": [0], "variants": {taken: {}}}))
    with pytest.raises(ConfigError, match="matched"):   # PGD-AT at the compute of a reading that does not exist
        load_params(_params_with(tmp_path, {"arch": "resnet", "seeds": [0], "variants": {"x": {}},
                                            "matched": ["y"]}))


def _matched(name: str, worst: list[float], images: int = 1520) -> list[dict]:
    return [{**_with_cost(_doc("resnet", "pgd_at_matched", s, v), images), "defense": matched_name(name)}
            for s, v in enumerate(worst)]


def test_pgd_at_at_a_readings_own_compute_is_one_more_rival_with_its_budget_ratio():
    reading = _reading("ensemble", [0.45, 0.46, 0.47], images=1500)
    matched = _matched("ensemble", [0.47, 0.485, 0.50])   # 0.025 above the reading on average
    result, notes = compare_readings([*reading, *matched], _main(), arch="resnet", names=["ensemble"],
                                     matched=["ensemble"])
    entry = result["ensemble"][OWN_COMPUTE]
    assert entry["b"] == matched_name("ensemble") and entry["label"] == "vs PGD-AT at its own compute"
    assert entry["ami"]["diff_mean"] == pytest.approx(-0.025, abs=1e-6) and entry["ami"]["reading"] == "behind"
    assert result["ensemble"]["_budget"]["pgd_at_own_compute"]["mean"] == pytest.approx(1520 / 1500, abs=1e-3)
    assert list(result["ensemble"]).index(OWN_COMPUTE) == 3   # beside the other compute comparisons
    assert notes == []
    # Not in readings.matched: no such rival, even if documents exist.
    result, _ = compare_readings([*reading, *matched], _main(), arch="resnet", names=["ensemble"])
    assert OWN_COMPUTE not in result["ensemble"] and "pgd_at_own_compute" not in result["ensemble"]["_budget"]
    # Listed but not run yet: said in the notes.
    result, notes = compare_readings(reading, _main(), arch="resnet", names=["ensemble"], matched=["ensemble"])
    assert OWN_COMPUTE not in result["ensemble"]
    assert any(f"no attack documents for {matched_name('ensemble')}" in note for note in notes)


def test_matched_documents_are_read_only_for_the_readings_listed_in_matched(tmp_path):
    for doc in _reading("ensemble", [0.45, 0.46, 0.47]):
        path = tmp_path / "readings" / "metrics" / "resnet" / "ensemble" / f"seed{doc['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**doc, "defense": "eat"}))
    path = reading_matched_metrics_path("resnet", "ensemble", tmp_path, 1)
    assert path == tmp_path / "readings/metrics/resnet/ensemble/pgd_at_matched/seed1.json"
    assert reading_matched_model_path("resnet", "ensemble", tmp_path, 1).suffix == ".pt"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")   # left from an earlier run: readings.matched no longer lists it, never read
    assert len(load_readings(tmp_path, "resnet", ["ensemble"], [0, 1, 2])) == 3
    with pytest.raises(ResultsError, match="reading-matched@ensemble-1"):   # listed: read, and its stage named
        load_readings(tmp_path, "resnet", ["ensemble"], [0, 1, 2], matched=["ensemble"])
    path.write_text(json.dumps({**_matched("ensemble", [0, 0.4])[1], "defense": "pgd_at_matched"}))
    docs = load_readings(tmp_path, "resnet", ["ensemble"], [0, 1, 2], matched=["ensemble"])
    assert sorted(d["defense"] for d in docs) == ["ensemble"] * 3 + [matched_name("ensemble")]


def test_pgd_at_at_a_readings_compute_is_refused_for_a_reading_not_in_matched_before_any_work(tmp_path,
                                                                                                monkeypatch):
    params = load_params(_params_with(tmp_path, {"arch": "resnet", "seeds": [0], "variants": {"x": {}},
                                                 "matched": []}))
    monkeypatch.setattr(pipeline, "load_data", lambda *a, **k: pytest.fail("work started before the check"))
    with pytest.raises(ConfigError, match="readings.matched"):
        pipeline.reading_matched(params, "x", 0, results=tmp_path)


def test_the_matched_folder_of_the_layout_is_the_matched_defense_of_params():
    from eatlib import layout, params

    assert layout.MATCHED == params.MATCHED
