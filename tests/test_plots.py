"""Figures and the eps-curve CSV from synthetic results: the values drawn (read back from the figures' lines,
bars and points) and written are the numbers in the results JSON."""

import json
import struct

import numpy as np
import pandas as pd
import pytest
from test_report import ARCHS, DEFENSES, SWEEP_EPS, write_synthetic_results

from eatlib import layout, plots, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def expected_size(figure) -> tuple[int, int]:
    width, height = figure.get_size_inches() * plots.DPI
    return round(width), round(height)


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    write_synthetic_results(root)
    return root


def test_eps_curves_have_one_row_per_defense_arch_eps_metric(results):
    frame = plots.eps_curves(report.load_metrics(results))
    assert list(frame.columns) == ["defense", "arch", "eps", "metric", "value"]
    points = len(SWEEP_EPS) + 1    # the sweep plus eps = 0 from the clean scores
    assert len(frame) == len(ARCHS) * len(DEFENSES) * points * len(plots.CURVE_METRICS)
    assert not frame.duplicated(["defense", "arch", "eps", "metric"]).any()
    assert sorted(frame["eps"].unique()) == pytest.approx([0.0, *SWEEP_EPS])


def test_eps_curve_csv_round_trips_the_sweep_values(results):
    path = plots.write_eps_curves_csv(results, results / "figures" / "eps_curves.csv", seed=0, include_clean=False)
    frame = pd.read_csv(path)
    assert len(frame) == len(ARCHS) * len(DEFENSES) * len(SWEEP_EPS) * len(plots.CURVE_METRICS)
    data = json.loads((layout.metrics_path("resnet", "eat", results, 0)).read_text())
    row = frame[(frame.defense == "eat") & (frame.arch == "resnet") & (frame.metric == "ari")
                & np.isclose(frame.eps, 4 / 255)]
    assert row["value"].item() == pytest.approx(data["sweep"]["metrics"][2]["ari"], rel=1e-12)


def test_sweep_with_mismatched_lengths_names_the_file(results):
    path = layout.metrics_path("mobilenet", "pgd_at", results, 0)
    data = json.loads(path.read_text())
    data["sweep"]["eps"] = data["sweep"]["eps"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(report.ResultsError, match=r"pgd_at/seed0\.json.*sweep\.eps"):
        plots.eps_curves(report.load_metrics(results))


def json_of(results, arch, defense) -> dict:
    return json.loads(layout.metrics_path(arch, defense, results, 0).read_text())


def test_write_figures_writes_every_file_and_the_csv_holds_the_json_sweep(results):
    written = plots.write_figures(results, seed=0)
    assert sorted(p.name for p in written) == ["ablation.png", "eps_curves.csv", "eps_curves_wide.csv",
                                              "robustness_eps.png"]
    assert png_size(results / "figures" / "robustness_eps.png") == (1365, 870)  # the file is a real PNG
    frame = pd.read_csv(results / "figures" / "eps_curves.csv")
    for arch in ARCHS:
        for defense in DEFENSES:
            data = json_of(results, arch, defense)
            for metric in plots.CURVE_METRICS:
                rows = frame[(frame.arch == arch) & (frame.defense == defense) & (frame.metric == metric)]
                want = [data["clean"][metric]] + [m[metric] for m in data["sweep"]["metrics"]]
                assert rows.sort_values("eps")["value"].tolist() == pytest.approx(want, rel=1e-12)


def test_robustness_figure_draws_the_json_scores_of_each_defense(results):
    metrics = ("ami", "ari")
    figure = plots.plot_robustness_curves(report.load_metrics(results), metrics=metrics)
    archs = sorted(ARCHS)  # one column per architecture, in sorted order
    for index, ax in enumerate(figure.axes):
        metric, arch = metrics[index // len(archs)], archs[index % len(archs)]
        lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
        assert set(lines) == set(DEFENSES), (metric, arch)
        for defense, line in lines.items():
            data = json_of(results, arch, defense)
            # x in units of 1/255 (eps 0 = the clean score), y the score from the JSON
            assert list(line.get_xdata()) == pytest.approx([0.0, *(e * 255 for e in SWEEP_EPS)])
            want = [data["clean"][metric]] + [m[metric] for m in data["sweep"]["metrics"]]
            assert list(line.get_ydata()) == pytest.approx(want, rel=1e-12), (metric, arch, defense)
        headline = [line for line in ax.get_lines() if line.get_label().startswith("_")]
        assert len(headline) == 1 and headline[0].get_xdata()[0] == pytest.approx(8.0)  # pgd20_centroid: 8/255


def test_ablation_figure_draws_clean_robust_and_worst_scores_from_the_json(results):
    runs = report.load_ablation(results)
    figure = plots.plot_ablation(runs, metrics=("ami", "ari"))
    for ax, metric in zip(figure.axes, ("ami", "ari"), strict=True):
        bars = [patch.get_width() for patch in ax.patches]
        documents = [json.loads(run.path.read_text()) for run in runs]
        clean = [d["clean"][metric] for d in documents]
        robust = [d["attacks"][d["headline"]][metric] for d in documents]
        assert bars == pytest.approx(clean + robust, rel=1e-12)  # the clean bars first, then the robust ones
        (ticks,) = ax.collections
        assert ticks.get_offsets()[:, 0].tolist() == pytest.approx([d["worst"][metric] for d in documents])


def test_robustness_figure_has_a_panel_per_metric_and_arch_and_a_line_per_defense(results):
    figure = plots.plot_robustness_curves(report.load_metrics(results), metrics=("ami", "ari", "nmi"))
    axes = figure.axes
    assert len(axes) == 3 * len(ARCHS)
    assert all(len(ax.get_lines()) == len(DEFENSES) + 1 for ax in axes)   # + the headline-eps line
    assert [text.get_text() for text in figure.legends[0].get_texts()][:3] == ["standard", "pgd_at", "eat"]


def test_training_curves_draw_each_history_value(tmp_path):
    history = [{"epoch": e + 1, "loss": 3 / (e + 1), "val_nmi": 0.5 + 0.01 * e, "val_recall@1": 0.4 + 0.02 * e}
               for e in range(10)]
    path = tmp_path / "training.png"
    figure = plots.plot_training_curves({"resnet / standard": history, "resnet / eat": history[:6]}, path)
    assert png_size(path) == expected_size(figure)
    assert len(figure.axes) == 3
    for ax, key in zip(figure.axes, ("loss", "val_nmi", "val_recall@1"), strict=True):
        lines = {line.get_label(): line for line in ax.get_lines()}
        for label, run in (("resnet / standard", history), ("resnet / eat", history[:6])):
            assert list(lines[label].get_xdata()) == [r["epoch"] for r in run]
            assert list(lines[label].get_ydata()) == pytest.approx([r[key] for r in run])
    with pytest.raises(ValueError, match="none of the keys"):
        plots.plot_training_curves({"x": [{"epoch": 1}]})


def test_tsne_png_two_panels(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 15)
    clean = rng.normal(size=(4, 16))[labels] + 0.1 * rng.normal(size=(60, 16))
    adversarial = clean + 0.5 * rng.normal(size=clean.shape)
    path = tmp_path / "tsne.png"
    figure = plots.plot_tsne(clean, adversarial, labels, path, title="standard", max_iter=250)
    assert png_size(path) == expected_size(figure) == (1350, 690)
    assert [ax.get_title() for ax in figure.axes] == ["clean", "adversarial"]
    assert all(len(ax.collections[0].get_offsets()) == 60 for ax in figure.axes)
    with pytest.raises(ValueError, match="one shape"):
        plots.plot_tsne(clean, adversarial[:10], labels)


def test_wide_eps_curves_have_one_column_per_arch_metric_defense(results):
    curves = plots.eps_curves(report.load_metrics(results), metrics=("ami", "ari"))
    wide = plots.eps_curves_wide(curves)
    assert list(wide.columns[:4]) == ["eps", "mobilenet/ami/standard", "mobilenet/ami/pgd_at", "mobilenet/ami/eat"]
    assert len(wide.columns) == 1 + len(ARCHS) * 2 * len(DEFENSES)
    assert wide["eps"].tolist() == pytest.approx([0.0, *SWEEP_EPS])
    data = json.loads((layout.metrics_path("resnet", "pgd_at", results, 0)).read_text())
    assert wide["resnet/ari/pgd_at"].tolist()[1:] == pytest.approx([m["ari"] for m in data["sweep"]["metrics"]])


def test_sweep_eps_may_be_fraction_strings(results):
    path = layout.metrics_path("resnet", "eat", results, 0)
    data = json.loads(path.read_text())
    data["sweep"]["eps"] = ["1/255", "2/255", "4/255", "8/255"]
    path.write_text(json.dumps(data))
    curves = plots.eps_curves(report.load_metrics(results))
    assert sorted(curves.loc[curves.defense == "eat", "eps"].unique()) == pytest.approx([0.0, *SWEEP_EPS])


def test_figures_use_the_main_seed_only_and_two_sweeps_of_one_defense_are_an_error(results):
    path = layout.metrics_path("resnet", "eat", results, 1)
    data = json.loads(path.read_text())
    zeros = [dict.fromkeys(plots.CURVE_METRICS, 0.0)] * len(SWEEP_EPS)
    data["sweep"] = json_of(results, "resnet", "eat")["sweep"] | {"metrics": zeros}
    path.write_text(json.dumps(data))
    with pytest.raises(report.ResultsError, match=r"resnet/eat: 2 seeds have a sweep.*runs_of_seed"):
        plots.eps_curves(report.load_metrics(results))
    plots.write_figures(results, seed=0)
    frame = pd.read_csv(results / "figures" / "eps_curves_wide.csv")
    assert frame["resnet/ami/eat"].tolist()[1:] == pytest.approx(
        [m["ami"] for m in json_of(results, "resnet", "eat")["sweep"]["metrics"]])
    with pytest.raises(report.ResultsError, match=r"no metrics documents of training seed 5"):
        plots.write_figures(results, seed=5)


def test_pgd_at_matched_is_dashed_in_pgd_at_colour_and_keeps_the_others_colours():
    styles = plots.defense_styles(["standard", "pgd_at", "pgd_at_matched", "eat"])
    assert styles["pgd_at_matched"]["color"] == styles["pgd_at"]["color"]
    assert styles["pgd_at_matched"]["linestyle"] == "--" and styles["pgd_at"]["linestyle"] == "-"
    assert styles["pgd_at_matched"]["marker"] != styles["pgd_at"]["marker"]
    alone = plots.defense_styles(["eat"])
    assert alone["eat"]["color"] == styles["eat"]["color"]
    everything = plots.defense_styles(report.CANONICAL_DEFENSES)
    colours = [everything[d]["color"] for d in report.CANONICAL_DEFENSES if d != "pgd_at_matched"]
    assert len(set(colours)) == len(colours)


def test_load_histories_reads_the_main_seed_checkpoints(tmp_path):
    from eatlib import checkpoint

    for seed in (0, 1):
        path = layout.model_path("resnet", "eat", tmp_path, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save_atomic({"history": [{"epoch": 1, "loss": float(seed)}]}, path)
    histories = plots.load_histories(["resnet"], ["eat"], tmp_path, seed=1)
    assert histories == {"resnet": {"eat": [{"epoch": 1, "loss": 1.0}]}}
