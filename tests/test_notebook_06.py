"""Notebook 06 (sweeps) at the tiny profile: it runs its own small sweep, or reads a given sweep folder."""

import json

import pytest

from fer_lab import notebooks as nbs
from fer_lab import sweep as sw

CELL_TIMEOUT = 300


@pytest.mark.slow
def test_notebook_06_metrics_tiny(tmp_path):
    record = nbs.run_notebook(nbs.discover(only=["06"])[0], tmp_path,
                              {"profile": "tiny", "device": "cpu", "out_dir": str(tmp_path / "runs")}, html=False,
                              cell_timeout=CELL_TIMEOUT)
    m = record["metrics"]
    assert m["profile"] == "tiny" and (m["runs"], m["done"], m["failed"], m["pending"]) == (8, 8, 0, 0)
    assert {(b["rule"], b["method"]) for b in m["best"]} >= {(r, x) for r in ("last", "target_test")
                                                              for x in ("source_only", "dann")}
    assert all(0.0 <= b["acc"] <= 1.0 and b["seeds"] == 2 for b in m["best"])
    assert set(m["headline"]) == {"runs done", "runs failed", f"source_only acc ({m['rule']})",
                                  f"dann acc ({m['rule']})"}
    table = sw.report(m["sweep_dir"], write=False)  # the folder it ran rebuilds the same figures
    assert [b["acc"] for b in table["best"]] == [b["acc"] for b in m["best"]]


@pytest.mark.slow
def test_notebook_06_reads_a_given_sweep_folder_as_it_stands(tmp_path):
    from test_sweep import _evals, _fake_run

    folder = tmp_path / "given"
    plan = sw.plan_training(["source_only", "dann"], seeds=[0, 1], draws=1, config={"profile": "tiny"})
    sw.create_sweep(folder, plan)
    _fake_run(folder, "source_only.synth-lab.synth-wild.d0.s0", _evals((5, 0.40, 0.70), (10, 0.50, 0.80)))
    _fake_run(folder, "dann.synth-lab.synth-wild.d0.s0", None, error="RuntimeError: out of memory")
    record = nbs.run_notebook(nbs.discover(only=["06"])[0], tmp_path / "nb",
                              {"profile": "tiny", "sweep_dir": str(folder)}, html=False, cell_timeout=CELL_TIMEOUT)
    m = record["metrics"]
    assert (m["runs"], m["done"], m["failed"], m["pending"]) == (4, 1, 1, 2)
    assert m["headline"]["source_only acc (source_val)"] == 50.0
    assert json.loads((folder / "results.json").read_text())["failed_runs"][0]["error"] == "RuntimeError: out of memory"
