"""The numbered notebooks: hygiene of the committed files, and a papermill run of each with its metrics checked.

``scripts/test.sh`` also runs ``pytest --nbval-lax notebooks`` (every cell must run in a fresh kernel, with the
``tiny`` profile), so these tests focus on what nbval cannot see: the figures each notebook reports.
"""

import json

import nbformat
import torch
import pytest

from fer_lab import notebooks as nbs

NOTEBOOKS = nbs.discover()
CELL_TIMEOUT = 300  # seconds; the slowest cell here takes under a minute: a stuck cell fails fast and is named


def test_there_are_numbered_notebooks():
    assert [p.name for p in NOTEBOOKS][:1] == ["00_synthfer_tour.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_clean(path):
    assert nbs.check(path) == []


def test_check_finds_outputs_counts_and_missing_parameters(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", execution_count=3,
                                                                   outputs=[nbformat.v4.new_output("stream", text="big" * 50000)])])
    path = tmp_path / "07_dirty.ipynb"
    nbformat.write(nb, path)
    problems = " ".join(nbs.check(path, max_kb=100))
    assert "over the 100 KiB limit" in problems and "stale execution count" in problems
    assert "carries outputs" in problems and "not tagged 'parameters'" in problems
    assert nbs.clean(path) is True and nbs.clean(path) is False  # idempotent
    cleaned = nbformat.read(path, as_version=4)
    assert cleaned.cells[0].outputs == [] and cleaned.cells[0].execution_count is None


def test_cell_timeout_interrupts_the_cell_and_names_it(tmp_path):
    """A stuck cell fails the run within the limit, with the cell's source and where it was in the error."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("results_path = 'r.json'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import time\nfor _ in range(600):\n    time.sleep(0.1)  # stuck"),
        nbformat.v4.new_code_cell("open(results_path, 'w').write('{}')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "98_stuck.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(Exception) as err:
        nbs.run_notebook(path, tmp_path / "out", html=False, cell_timeout=3)
    text = str(err.value)
    assert "KeyboardInterrupt" in text and "time.sleep(0.1)" in text, text
    executed = nbformat.read(tmp_path / "out" / path.name, as_version=4)
    assert executed.cells[-1].get("execution_count") is None  # the run stopped at the stuck cell


@pytest.mark.slow
def test_notebook_00_metrics_tiny(tmp_path):
    """Notebook 00 end to end at the tiny profile: the bench rows, the alignment numbers, the metrics layout and the
    HTML report (which method wins is the bench's question, not a test's)."""
    record = nbs.run_notebook(NOTEBOOKS[0], tmp_path, {"profile": "tiny", "device": "cpu",
                                                       "out_dir": str(tmp_path / "runs"),
                                                       "bench_dir": str(tmp_path / "bench")}, html=True,
                              cell_timeout=CELL_TIMEOUT)
    m = record["metrics"]
    acc = m["target_acc"]
    assert m["profile"] == "tiny" and m["seeds"] == [0] and set(acc) == {"source_only", "dann", "oracle"}
    assert all(0.0 <= a <= 1.0 for a in acc.values()), acc
    assert m["headline"] == {f"{k} acc": round(100 * v, 1) for k, v in acc.items()}
    assert set(m["dann_vs_source_only"]) >= {"diff", "lo", "hi", "wins", "n"}
    assert 0.0 <= m["pad_fused"]["dann"] <= 2.0
    assert (tmp_path / "00_synthfer_tour.html").stat().st_size > 10_000
    assert json.loads((tmp_path / "00_synthfer_tour.metrics.json").read_text()) == m


@pytest.mark.slow
def test_notebook_05_metrics_tiny(tmp_path):
    """Notebook 05 end to end at the tiny profile: the layout of its metrics (nbval runs it too; the smoke-profile
    comparison is tests/methods/test_gen_fer.py's question, and the README gives the notebook's smoke figures)."""
    path = next(p for p in NOTEBOOKS if p.name == "05_generalizable_fer.ipynb")
    record = nbs.run_notebook(path, tmp_path, {"profile": "tiny", "device": "cpu", "out_dir": str(tmp_path / "runs")},
                              html=False, cell_timeout=CELL_TIMEOUT)
    m = record["metrics"]
    methods = {"gen_fer", "source-only (fine-tuned)", "linear probe"}
    assert m["profile"] == "tiny" and m["encoder"] == "dlib:face_resnet?feature=pooled" and set(m["mean_unseen"]) == methods
    for name, row in m["accuracy"].items():
        assert list(row) == ["synth:lab (source)", "synth:wild", "synth:lowres", "synth:profile", "mean unseen"]
        assert row["mean unseen"] == pytest.approx(sum(row[d] for d in list(row)[1:4]) / 3)
        assert all(0.0 <= v <= 1.0 for v in row.values()), (name, row)
    assert m["headline"] == {f"{k} unseen": round(100 * v, 1) for k, v in m["mean_unseen"].items()}
    assert m["pretrain_seconds"] >= 0 and len(m["mask_ownership"]) == 7
    assert all(1 <= v for v in m["mask_distinct_winners"].values())


@pytest.mark.slow
def test_notebook_01_metrics_tiny(tmp_path):
    """Notebook 01 end to end with every ablation, at the tiny profile: the bench rows, the ablations from the shared
    stage 1, GLPC's shares (nbval runs it too; which method wins is a bench result, not a test)."""
    record = nbs.run_notebook(nbs.discover(only=["01"])[0], tmp_path,
                              {"profile": "tiny", "device": "cpu", "out_dir": str(tmp_path / "runs"),
                               "bench_dir": str(tmp_path / "bench")}, html=False, cell_timeout=CELL_TIMEOUT)
    m = record["metrics"]
    assert m["profile"] == "tiny" and m["seeds"] == [0] and m["stage1_steps"] > 0
    expected = {"source-only", "DANN", "CDAN-E", "AGLRLS", "oracle", "AGLRLS, argmax of the fused stream",
                "AGLRLS, w/o local streams", "AGLRLS, fixed threshold 0.95", "AGLRLS, w/o pseudo labels"}
    assert set(m["target_acc"]) == expected
    assert all(0.0 <= a <= 1.0 for a in m["target_acc"].values())
    assert set(m["vs_source_only"]) == {"DANN", "CDAN-E", "AGLRLS", "oracle"}
    assert set(m["glpc_share"]) == {"fused", "global", "sum"}
    assert sum(m["glpc_share"].values()) == pytest.approx(1.0)
    assert m["headline"]["AGLRLS acc"] == round(100 * m["target_acc"]["AGLRLS"], 1)
    assert (tmp_path / "runs" / "bench" / "bench.md").is_file() and (tmp_path / "bench" / "jobs").is_dir()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; the full profile is sized for one")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_full_profile_on_cuda(path, tmp_path):
    record = nbs.run_notebook(path, tmp_path, {"profile": "full", "device": "cuda",
                                               "out_dir": str(tmp_path / "runs")}, html=False)
    assert record["metrics"]["profile"] == "full"
