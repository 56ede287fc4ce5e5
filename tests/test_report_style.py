"""Report plots tell many methods apart, log-scale a loss axis spanning orders of magnitude and keep
per-class bars to a readable width."""

import json

from PIL import Image

from kdlab.protocols.result_line import upgrade
from kdlab.report import plots
from kdlab.report.style import method_style, wants_log_scale
from tests.test_study import fake_record

NAMES = ["ce", *(f"m{i:02d}" for i in range(17))]


def test_eighteen_methods_get_distinct_colours_and_markers():
    styles = [method_style(i) for i in range(18)]
    assert len({s["color"] for s in styles}) == 18 and len({s["marker"] for s in styles}) >= 12
    assert len({(s["color"], s["marker"], s["linestyle"]) for s in map(method_style, range(60))}) == 60


def test_log_scale_only_across_orders_of_magnitude():
    assert wants_log_scale([0.5, 2.0, 900.0]) and not wants_log_scale([0.5, 2.0, 9.0])
    assert not wants_log_scale([])


def records(tmp_path, classes=10):
    rows = []
    for index, name in enumerate(NAMES):
        row = upgrade(fake_record(name, "clean", 0, 60.0 + index))
        row["metrics"]["test_last"]["per_class_top1"] = [50.0 + (index + c) % 40 for c in range(classes)]
        row["classes"] = [f"c{c}" for c in range(classes)]
        rows.append(row)
        run_dir = tmp_path / row["run_dir"]
        run_dir.mkdir(parents=True)
        scale = 1000.0 if name == "m03" else 1.0
        lines = [{"kind": "train", "step": s, "epoch": s / 10, "loss": scale / s} for s in range(1, 20)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return rows


def test_per_class_bars_are_split_instead_of_thousands_of_pixels_wide(tmp_path):
    path = plots.per_class(records(tmp_path), "big->small", "clean", "test_last", "ce", tmp_path / "p.png")
    width, height = Image.open(path).size
    assert width <= plots.MAX_WIDTH * plots.DPI and height > 1.5 * 4.6 * plots.DPI  # two panels


def test_the_loss_panel_is_log_scaled_when_one_loss_dwarfs_the_rest(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.training_curves(records(tmp_path), tmp_path, "big->small", "clean", "ce", tmp_path / "c.png")
    loss_axis = figures[0].axes[1]
    assert loss_axis.get_yscale() == "log" and "log scale" in loss_axis.get_ylabel()
    assert len({line.get_color() for line in loss_axis.lines}) == len(NAMES)
