"""The `dvc plots` definitions in dvc.yaml name columns the report stage's CSVs really have; the training-curve
CSV; the offline template for `dvc plots show`."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dvc_render.html import HTML

from eatlib import plots

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _plot_definitions() -> dict[str, dict]:
    definitions = {}
    for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]:
        (name, definition), = entry.items()
        definitions[name] = definition
    return definitions


def _history(epochs: int, offset: float) -> list[dict]:
    return [{"epoch": e, "loss": 3 - 0.1 * e + offset, "val_nmi": 0.5 + 0.02 * e + offset, "lr": 0.1}
            for e in range(1, epochs + 1)]


def _pipeline_histories() -> tuple[dict, dict]:
    """What the report stage passes to write_training_curves_csv for the params.yaml pipeline."""
    archs = PARAMS["pipeline"]["archs"]
    defenses = [d for c in PARAMS["pipeline"]["compared"] for d in ([c, "pgd_at_matched"] if c == "pgd_at" else [c])]
    defenses += PARAMS["pipeline"]["single_seed"]
    training = {a: {d: _history(PARAMS["train"]["epochs"], i / 10) for i, d in enumerate(defenses)} for a in archs}
    pretrain = {a: {"pretrain": _history(PARAMS["pretrain"]["epochs"], 0)} for a in archs}
    return training, pretrain


def test_every_plot_has_a_title_axis_labels_and_columns_the_csvs_have(tmp_path):
    training, pretrain = _pipeline_histories()
    csvs = {
        "results/figures/eps_curves_wide.csv": pd.read_csv(ROOT / "results/figures/eps_curves_wide.csv"),
        "results/figures/training_curves.csv": plots.training_curves_wide(training),
        "results/figures/pretrain_curves.csv": plots.training_curves_wide(pretrain),
    }
    definitions = _plot_definitions()
    assert len(definitions) >= 10
    for name, definition in definitions.items():
        assert {"title", "x", "x_label", "y", "y_label"} <= set(definition), name
        for path, columns in definition["y"].items():
            assert path in csvs, f"{name}: {path} is not a CSV the report stage writes"
            assert definition["x"] in csvs[path].columns, name
            missing = set(columns) - set(csvs[path].columns)
            assert not missing, f"{name}: {path} has no column {sorted(missing)}"


def test_training_curves_wide_has_one_row_per_epoch_and_one_column_per_arch_key_run():
    frame = plots.training_curves_wide({"resnet": {"eat": _history(3, 0), "standard": _history(2, 1)}})
    assert list(frame.columns) == ["epoch", "resnet/loss/eat", "resnet/loss/standard", "resnet/val_nmi/eat",
                                   "resnet/val_nmi/standard"]      # lr is not a curve key; val_recall@1 absent
    assert list(frame["epoch"]) == [1, 2, 3]
    assert frame.loc[2, "resnet/loss/eat"] == pytest.approx(2.7)
    assert pd.isna(frame.loc[2, "resnet/loss/standard"])           # a shorter run leaves an empty cell
    with pytest.raises(ValueError, match="none of the keys"):
        plots.training_curves_wide({"resnet": {"eat": [{"epoch": 1, "lr": 0.1}]}})


def test_write_training_curves_csv_round_trips(tmp_path):
    training, _ = _pipeline_histories()
    path = plots.write_training_curves_csv(training, tmp_path / "training_curves.csv")
    pd.testing.assert_frame_equal(pd.read_csv(path), plots.training_curves_wide(training), check_dtype=False)


def _template_module():
    spec = importlib.util.spec_from_file_location("offline_plots_template", ROOT / "scripts/offline_plots_template.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_offline_template_keeps_dvc_from_adding_its_cdn_scripts():
    module = _template_module()
    page = module.template({name: f"window.{name.replace('-', '_')} = 1;" for name in module.LIBRARIES})
    cdn = '<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"></script>'
    html = HTML(page).with_scripts(cdn).with_element('<div id="plot"></div>').embed()  # as `dvc plots show` does
    assert "cdn.jsdelivr" not in html and "http" not in html.split("</head>")[0]
    assert '<div id="plot"></div>' in html and "window.vega_embed = 1;" in html
    assert set(module.LIBRARIES) == {"vega", "vega-lite", "vega-embed"}
