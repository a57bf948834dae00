"""Notebook 04 (pose-aware adversarial DA, personalised) end to end at the tiny profile: the layout of its metrics.
nbval runs it too; whether pose-aware ADA beats the baselines is a benchmark result (the README's table), not a test."""

import pytest

from fer_lab import notebooks as nbs

CELL_TIMEOUT = 300


@pytest.mark.slow
def test_notebook_04_metrics_tiny(tmp_path):
    record = nbs.run_notebook(nbs.discover(only=["04"])[0], tmp_path,
                              {"profile": "tiny", "device": "cpu", "out_dir": str(tmp_path / "runs")}, html=False,
                              cell_timeout=CELL_TIMEOUT)
    m = record["metrics"]
    rows = {"source-only", "DANN", "CDAN-E", "pose-aware ADA", "w/o cross-adversarial", "w/o reconstruction",
            "not personalised (pooled)"}
    assert m["profile"] == "tiny" and m["people"] == [0] and set(m["per_person"]) == rows
    for name, row in m["per_person"].items():
        assert list(row) == ["person 0", "mean"] and row["mean"] == row["person 0"], name
        assert all(0.0 <= v <= 1.0 for v in row.values())
    assert set(m["by_yaw"]) == rows and list(m["yaw_faces"]) == ["|yaw| < 15", "15-30", "30-45", "45-60", ">= 60"]
    assert sum(m["yaw_faces"].values()) == m["faces_per_person"]
    after = m["leakage"]["after: pose-aware ADA"]
    assert {"pose from expression code", "expression from pose code", "pose chance"} <= set(after)
    assert "expression from pose code" not in m["leakage"]["source-only (features)"]
    assert all(0.0 <= v <= 1.0 for v in m["swap_l1"].values()) and m["step_ratio_vs_dann"] > 0
    assert m["headline"] == {f"{k} mean acc": round(100 * v["mean"], 1) for k, v in m["per_person"].items()}
