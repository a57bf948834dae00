"""Notebook 03 (DMSRL) end to end at the tiny profile: the figures it reports (nbval runs its cells too)."""

import pytest

from fer_lab import notebooks as nbs

CELL_TIMEOUT = 300


@pytest.mark.slow
def test_notebook_03_metrics_tiny(tmp_path):
    record = nbs.run_notebook(nbs.discover(only=["03"])[0], tmp_path,
                              {"profile": "tiny", "device": "cpu", "out_dir": str(tmp_path / "runs")}, html=False,
                              cell_timeout=CELL_TIMEOUT)
    m = record["metrics"]
    assert m["profile"] == "tiny" and m["bench_seeds"] == [0]
    # the tiny profile benches three rows (the full list is for smoke / full)
    assert set(m["target_acc"]) == {"source-only", "DMSRL", "released code (MI = discriminator)"}
    assert set(m["target_acc_by_selection"]) == {"last", "source_val", "target_test"}
    assert all(0.0 <= a <= 1.0 for sel in m["target_acc_by_selection"].values() for a in sel.values())
    assert all(v is not None and v >= 0 for v in m["margins_last"].values())
    assert m["mi_last"] is not None and 0.0 <= m["nearest_target_centre_acc"] <= 1.0
    assert m["headline"]["DMSRL acc"] == round(100 * m["target_acc"]["DMSRL"], 1)
