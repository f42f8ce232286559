"""The forest plot: paired differences vs reference rows, oriented so that right = better."""

from __future__ import annotations

import pytest

from lorasoups.report import write_report
from lorasoups.report.forest import Z95, forest_panels, plot_forest


def _doc(paired, compare_to=("linear",), forest_columns=None):
    report = {"compare_to": list(compare_to)}
    if forest_columns is not None:
        report["forest_columns"] = forest_columns
    return {
        "name": "toy", "preset": "t",
        "methods": {"base": {"method": "base"}, "linear": {"method": "linear"}, "cat": {"method": "cat"},
                    "ties": {"method": "ties"}},
        "columns": [{"label": "NLL", "task": "t", "metric": "nll", "better": "lower", "target": True},
                    {"label": "acc", "task": "t", "metric": "acc", "better": "higher", "target": True},
                    {"label": "control", "task": "t", "metric": "nll_control", "better": "none", "target": False},
                    {"label": "skill NLL", "task": "s", "metric": "nll", "better": "lower", "target": False}],
        "config": {"report": report},
        "analysis": {"paired": paired},
    }


def _p(column, method, diff, stderr, ref="linear", n=80):
    z = diff / stderr if stderr else 0.0
    return {"column": column, "method": method, "vs": f"method:{ref}", "ref": ref, "diff": diff,
            "stderr": stderr, "n": n, "z": z, "significant": abs(z) >= 1.96,
            "direction": "better" if diff > 0 else ("worse" if diff < 0 else "same")}


def test_lower_is_better_is_negated_and_interval_is_95_percent():
    doc = _doc([_p("NLL", "cat", 0.0076, 0.0012), _p("NLL", "ties", -0.003, 0.002),
                _p("acc", "cat", 0.05, 0.04)])
    panels = forest_panels(doc)
    assert [(p["column"], p["ref"]) for p in panels] == [("NLL", "linear"), ("acc", "linear")]
    rows = {r["method"]: r for r in panels[0]["rows"]}
    # CAT's NLL is higher than linear's: worse, so the effect is negative and the interval excludes 0
    assert rows["cat"]["effect"] == pytest.approx(-0.0076)
    assert rows["cat"]["lo"] == pytest.approx(-0.0076 - Z95 * 0.0012)
    assert rows["cat"]["hi"] == pytest.approx(-0.0076 + Z95 * 0.0012) and rows["cat"]["hi"] < 0
    assert rows["cat"]["significant"]
    # ties is lower (better) than linear but within 1.96 s.e.
    assert rows["ties"]["effect"] == pytest.approx(0.003) and not rows["ties"]["significant"]
    acc = panels[1]["rows"][0]
    assert acc["effect"] == pytest.approx(0.05) and not acc["significant"]


def test_floor_columns_controls_and_skill_columns_are_left_out():
    # every method ties linear on every item of acc (all at the floor): the column says nothing
    doc = _doc([_p("NLL", "cat", 0.01, 0.001), _p("acc", "cat", 0.0, 0.0), _p("acc", "ties", 0.0, 0.0),
                _p("control", "cat", 0.5, 0.01), _p("skill NLL", "cat", 0.5, 0.01)])
    assert [p["column"] for p in forest_panels(doc)] == ["NLL"]
    # naming columns explicitly overrides the target rule
    doc = _doc([_p("NLL", "cat", 0.01, 0.001), _p("skill NLL", "cat", -0.5, 0.01)], forest_columns=["skill NLL"])
    panels = forest_panels(doc)
    assert [p["column"] for p in panels] == ["skill NLL"] and panels[0]["rows"][0]["effect"] == pytest.approx(0.5)


def test_one_panel_per_reference_and_nothing_without_references(tmp_path):
    paired = [_p("NLL", "cat", 0.01, 0.001), _p("NLL", "cat", 0.02, 0.001, ref="data_mix")]
    doc = _doc(paired, compare_to=("linear", "data_mix"))
    assert [p["ref"] for p in forest_panels(doc)] == ["linear", "data_mix"]
    out = plot_forest(doc, tmp_path / "forest.png")
    assert out is not None and out.stat().st_size > 1000
    assert plot_forest(_doc(paired, compare_to=()), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_write_report_adds_forest_and_removes_a_stale_one(tmp_path):
    doc = _doc([_p("NLL", "cat", 0.01, 0.001)])
    doc["results"] = {m: {"t": {"metrics": {"nll": {"value": 1.0, "stderr": 0.1, "n": 8}}}} for m in doc["methods"]}
    written = write_report(doc, tmp_path)
    assert written["forest"] == tmp_path / "forest.png" and written["forest"].exists()
    doc["config"]["report"]["compare_to"] = []
    written = write_report(doc, tmp_path)
    assert "forest" not in written and not (tmp_path / "forest.png").exists()


def test_forest_columns_are_validated_against_the_column_labels():
    from pathlib import Path

    from lorasoups.config import load_config
    from lorasoups.errors import ConfigError

    cfg = Path(__file__).resolve().parents[2] / "configs" / "math_code.yaml"
    ok = load_config(cfg, "smoke", ['report.forest_columns=["GSM-Hard NLL gap"]'])
    assert ok is not None
    with pytest.raises(ConfigError, match=r"report.forest_columns: 'GSM-Hard NLL' is not a label"):
        load_config(cfg, "smoke", ['report.forest_columns=["GSM-Hard NLL"]'])


def test_base_row_is_left_out_and_a_column_where_only_base_differs_is_dropped():
    # every adapter gives the same answers (accuracy ties linear item by item); only the base model
    # differs: the accuracy panel says nothing about the combinations and is dropped, and base is no
    # row of the NLL panel either
    doc = _doc([_p("acc", "base", -0.39, 0.026), _p("acc", "cat", 0.0, 0.0), _p("acc", "ties", 0.0, 0.0),
                _p("NLL", "base", 2.85, 0.02), _p("NLL", "cat", 0.0003, 0.0003)])
    panels = forest_panels(doc)
    assert [p["column"] for p in panels] == ["NLL"]
    assert [r["method"] for r in panels[0]["rows"]] == ["cat"]


@pytest.mark.parametrize("n_rows", [3, 14])
def test_figure_title_does_not_overlap_the_top_panels(n_rows, tmp_path):
    """save_figure keeps a band for the figure title: its box and the top axes' titles are disjoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lorasoups.report.plot import save_figure

    fig, axes = plt.subplots(4, 2, figsize=(11.2, (0.28 * n_rows + 1.2) * 4 + 0.5))
    for ax in axes.flat:
        ax.plot(range(n_rows), range(n_rows))
        ax.set_title("QABot ROUGE-L vs linear", fontsize=8.5)
    seen = {}
    real_savefig = fig.savefig

    def spy(path, **kw):
        real_savefig(path, **kw)
        renderer = fig.canvas.get_renderer()
        seen["sup"] = fig._suptitle.get_window_extent(renderer)
        seen["titles"] = [ax.title.get_window_extent(renderer) for ax in axes[0]]

    fig.savefig = spy
    save_figure(fig, tmp_path / "f.png", "a long figure title: every method vs the reference rows, same items")
    assert seen, "save_figure did not save"
    for box in seen["titles"]:
        assert box.y1 <= seen["sup"].y0, (box, seen["sup"])
