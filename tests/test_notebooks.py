"""The numbered notebooks: hygiene of the committed files, and the figures each one reports.

``scripts/test.sh`` runs nbval over ``notebooks/`` first (every cell must run in a fresh kernel, with the ``tiny``
profile); the metrics tests here check what nbval cannot see, the figures each notebook wrote, and reuse that run
(:func:`conftest.notebook_record`): every notebook runs once per suite. Called on their own they run the notebook
with papermill.
"""

import json

import nbformat
import torch
import pytest

from conftest import notebook_record
from fer_lab import notebooks as nbs
from fer_lab import sweep as sw

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


def test_the_quick_cuts_set_parameters_each_notebook_defines():
    by_number = {p.name[:2]: p for p in NOTEBOOKS}
    assert set(nbs.QUICK) <= set(by_number)
    for number, cuts in nbs.QUICK.items():
        defaults = nbs.parameters(by_number[number])
        for name, value in cuts.items():
            assert name in defaults, f"{number}: the quick cut {name!r} is not a parameter of the notebook"
            default = defaults[name]
            assert default is None or type(value) is type(default), (number, name, value, default)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_notebook_rebinds_a_switch(path):
    """A True/False parameter keeps its meaning through the notebook: notebook 05 once reused ``table1`` for a dict
    of results, which made ``table1=False`` a no-op."""
    import ast

    switches = {k for k, v in nbs.parameters(path).items() if isinstance(v, bool)}
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"][1:]
    rebound = {n.id for c in cells for n in ast.walk(ast.parse(c.source))
               if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and n.id in switches}
    assert not rebound, f"{path.name} assigns its switch parameter(s) {sorted(rebound)} again"


def test_run_all_adds_the_quick_cuts_only_when_asked(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(nbs, "run_notebook", lambda path, out, params, **kw: seen.setdefault(path.name[:2], []).append(
        params) or {"notebook": path.name, "seconds": 0.0, "metrics": {}})
    nbs.run_all("tiny", "cpu", tmp_path, only=["01", "05"], extra={"bench_dir": "b"}, quick=True)
    nbs.run_all("tiny", "cpu", tmp_path, only=["01", "05"], extra={"bench_dir": "b"})
    assert seen["01"] == [{"profile": "tiny", "device": "cpu", "bench_dir": "b", "ablations": False},
                          {"profile": "tiny", "device": "cpu", "bench_dir": "b"}]
    assert seen["05"][0]["table1"] is False and "table1" not in seen["05"][1]


def test_lanes_run_notebooks_side_by_side_with_one_thread_and_one_worker_each(tmp_path):
    """Two lanes, three notebooks: every record comes back in notebook order; each kernel saw one thread and the
    notebook's own pool was set to one worker; a parameter a notebook does not define is not passed to it."""
    for i in range(3):
        nb = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_code_cell("results_path = 'r.json'\nworkers = 2\nprofile = 'auto'\ndevice = 'auto'",
                                      metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("import json, os\nopen(results_path, 'w').write(json.dumps({'threads': "
                                      "os.environ.get('OMP_NUM_THREADS'), 'workers': workers, "
                                      "'has_bench_dir': 'bench_dir' in globals()}))")])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, tmp_path / f"{i:02d}_lane.ipynb")
    records = nbs.run_all("tiny", "cpu", tmp_path / "out", root=tmp_path, extra={"bench_dir": "b"}, lanes=2)
    assert [r["notebook"] for r in records] == ["00_lane.ipynb", "01_lane.ipynb", "02_lane.ipynb"]
    assert all(r["metrics"] == {"threads": "1", "workers": 1, "has_bench_dir": False} for r in records)


def test_parameters_reads_the_parameters_cell(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"),
                                         nbformat.v4.new_code_cell("a = 1  # one\nb = (0, 1)\nc = len('x')\nd = e = 'x'")])
    nbformat.write(nb, tmp_path / "00_p.ipynb")
    assert nbs.parameters(tmp_path / "00_p.ipynb") == {"a": 1, "b": (0, 1), "c": None, "d": "x", "e": "x"}


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
    """Notebook 00 end to end at the tiny profile: the bench rows, the alignment numbers, the metrics layout (which
    method wins is the bench's question, not a test's)."""
    record = notebook_record("00", tmp_path)
    m = record["metrics"]
    acc = m["target_acc"]
    assert m["profile"] == "tiny" and m["seeds"] == [0] and set(acc) == {"source_only", "dann", "oracle"}
    assert all(0.0 <= a <= 1.0 for a in acc.values()), acc
    assert m["headline"] == {f"{k} acc": round(100 * v, 1) for k, v in acc.items()}
    assert set(m["dann_vs_source_only"]) >= {"diff", "lo", "hi", "wins", "n"}
    assert 0.0 <= m["pad_fused"]["dann"] <= 2.0
    assert (record["dirs"]["bench_dir"] / "jobs").is_dir()


@pytest.mark.slow
def test_notebook_05_metrics_tiny(tmp_path):
    """Notebook 05 end to end at the tiny profile: the layout of its metrics (nbval runs it too; the smoke-profile
    comparison is tests/methods/test_gen_fer.py's question, and the README gives the notebook's smoke figures)."""
    record = notebook_record("05", tmp_path)
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
    # Table 1: each domain as the source, four read-outs each; the table is the mean of its per-seed rows, and
    # section 2's runs (lab, the notebook's seed) are the Table's lab rows
    t1_methods = {"gen_fer (group-max, paper)", "gen_fer (FC, released code)", "linear probe", "source-only (fine-tuned)"}
    domains = ["synth:lab", "synth:wild", "synth:lowres", "synth:profile"]
    assert m["table1_seeds"] == [0] and sorted(m["table1"]) == sorted(domains)
    assert all(set(per) == t1_methods for per in m["table1"].values())
    assert len(m["table1_per_seed"]) == 16
    for r in m["table1_per_seed"]:
        assert m["table1"][r["trained on"]][r["method"]]["mean unseen"] == pytest.approx(r["mean unseen"])
    lab = m["table1"]["synth:lab"]
    assert lab["gen_fer (group-max, paper)"]["mean unseen"] == pytest.approx(m["mean_unseen"]["gen_fer"])
    assert lab["linear probe"]["mean unseen"] == pytest.approx(m["mean_unseen"]["linear probe"])
    assert set(m["table1_paired"]["synth:wild"]) == {"linear probe", "source-only (fine-tuned)"}


@pytest.mark.slow
def test_notebook_01_metrics_tiny(tmp_path):
    """Notebook 01 end to end with every ablation, at the tiny profile: the bench rows, the ablations from the shared
    stage 1, GLPC's shares (nbval runs it too; which method wins is a bench result, not a test)."""
    record = notebook_record("01", tmp_path)
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
    assert (record["dirs"]["out_dir"] / "bench" / "bench.md").is_file() and (record["dirs"]["bench_dir"] / "jobs").is_dir()


@pytest.mark.slow
def test_notebook_02_metrics_tiny(tmp_path):
    """Notebook 02 (LA-CMFER) end to end at the tiny profile, with its metrics checked (nbval runs it too)."""
    record = notebook_record("02", tmp_path)
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


@pytest.mark.slow
def test_notebook_03_metrics_tiny(tmp_path):
    """Notebook 03 (DMSRL) end to end at the tiny profile: the figures it reports (nbval runs its cells too)."""
    record = notebook_record("03", tmp_path)
    m = record["metrics"]
    assert m["profile"] == "tiny" and m["bench_seeds"] == [0]
    # the tiny profile benches three rows (the full list is for smoke / full)
    assert set(m["target_acc"]) == {"source-only", "DMSRL", "released code (MI = discriminator)"}
    assert set(m["target_acc_by_selection"]) == {"last", "source_val", "target_test"}
    assert all(0.0 <= a <= 1.0 for sel in m["target_acc_by_selection"].values() for a in sel.values())
    assert all(v is not None and v >= 0 for v in m["margins_last"].values())
    assert m["mi_last"] is not None and 0.0 <= m["nearest_target_centre_acc"] <= 1.0
    assert m["headline"]["DMSRL acc"] == round(100 * m["target_acc"]["DMSRL"], 1)


@pytest.mark.slow
def test_notebook_04_metrics_tiny(tmp_path):
    """Notebook 04 (pose-aware adversarial DA, personalised) end to end at the tiny profile: the layout of its metrics.
nbval runs it too; whether pose-aware ADA beats the baselines is a benchmark result (the README's table), not a test."""
    record = notebook_record("04", tmp_path)
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


@pytest.mark.slow
def test_notebook_06_metrics_tiny(tmp_path):
    """Notebook 06 (sweeps) at the tiny profile: it runs its own small sweep, or reads a given sweep folder."""
    record = notebook_record("06", tmp_path)
    m = record["metrics"]
    assert m["profile"] == "tiny" and (m["runs"], m["done"], m["failed"], m["pending"]) == (8, 8, 0, 0)
    assert {(b["rule"], b["method"]) for b in m["best"]} >= {(r, x) for r in ("last", "target_test")
                                                              for x in ("source_only", "dann")}
    assert all(0.0 <= b["acc"] <= 1.0 and b["seeds"] == 2 for b in m["best"])
    assert set(m["headline"]) == {"runs done", "runs failed", f"source_only acc ({m['rule']})",
                                  f"dann acc ({m['rule']})"}
    folder = nbs.NOTEBOOK_DIR / m["sweep_dir"]             # relative paths are the notebook's (nbval's cwd)
    table = sw.report(folder, write=False)  # the folder it ran rebuilds the same figures
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; the full profile is sized for one")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_full_profile_on_cuda(path, tmp_path):
    record = nbs.run_notebook(path, tmp_path, {"profile": "full", "device": "cuda",
                                               "out_dir": str(tmp_path / "runs")}, html=False)
    assert record["metrics"]["profile"] == "full"
