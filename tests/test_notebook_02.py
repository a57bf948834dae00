"""Notebook 02 (LA-CMFER) end to end at the tiny profile, with its metrics checked (nbval runs it too)."""

import pytest

from fer_lab import notebooks as nbs

CELL_TIMEOUT = 300


@pytest.mark.slow
def test_notebook_02_metrics_tiny(tmp_path):
    record = nbs.run_notebook(nbs.discover(only=["02"])[0], tmp_path,
                              {"profile": "tiny", "device": "cpu", "out_dir": str(tmp_path / "runs")}, html=False,
                              cell_timeout=CELL_TIMEOUT)
    m = record["metrics"]
    assert m["profile"] == "tiny" and m["sources"] == ["synth:lab", "synth:lowres", "synth:profile"]
    expected = {"LA-CMFER", "LA-CMFER branches, source only", "source-only", "DANN", "CDAN-E",
                "LA-CMFER w/o sample weights", "LA-CMFER w/o cluster term", "LA-CMFER w/o intra-domain term",
                "LA-CMFER w/o pseudo labels"}
    assert set(m["target_acc"]) == expected
    assert all(0.0 <= a <= 1.0 for a in m["target_acc"].values())
    assert set(m["inference_acc"]) == {"global", "local", "average"}
    assert m["inference_acc"]["average"] == pytest.approx(m["target_acc"]["LA-CMFER"])
    assert set(m["pseudo_labels"]) == {"agreement (paper)", "global alone", "local alone", "average alone"}
    assert all(0.0 <= r["coverage"] <= 1.0 for r in m["pseudo_labels"].values())
    assert set(m["similarity_off_diagonal"]) == {"before", "after"}
    assert sum(m["source_weight_share"].values()) == pytest.approx(1.0, abs=1e-4) or \
        sum(m["source_weight_share"].values()) == 0
    assert m["headline"]["LA-CMFER acc"] == round(100 * m["target_acc"]["LA-CMFER"], 1)
    assert m["bench"] is None                                  # run_bench is off by default
