"""Sweeps: plans, seeded draws, the selection rules, the results table, a real kill and resume, the slurm launcher."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import nbformat
import numpy as np
import pytest
from scipy import stats

from fer_lab import sweep as sw
from fer_lab.methods import METHODS
from fer_lab.runner import is_done, read_result

# a training run of a few seconds: the tiny profile cut further
TINY = {"profile": "tiny", "steps": 6, "eval_every": 3, "checkpoint_every": 3, "log_every": 3, "n_train": 64,
        "n_test": 32, "batch_size": 8}
TINY_ARGS = ["--profile", "tiny", "--steps", "6", *[a for k in ("eval_every", "checkpoint_every", "log_every",
                                                                "n_train", "n_test", "batch_size")
                                                    for a in ("--set", f"{k}={TINY[k]}")]]


def make_notebook(path):
    """A two-cell notebook with a parameters cell; x == 3 fails, on purpose."""
    params = 'x = 1\nlr = 0.1\nseed = 0\nprofile = "auto"\nresults_path = "r.json"\nout_dir = "runs"'
    body = ('import json, os\nif x == 3:\n    raise ValueError("x=3 is refused")\nos.makedirs(out_dir, exist_ok=True)\n'
            'json.dump({"profile": profile, "headline": {"y": x * 10 + seed, "lr": lr}}, open(results_path, "w"))')
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


# -- statistics -----------------------------------------------------------------------------------------------------
def test_mean_ci_is_the_t_interval_and_paired_ci_pairs_by_seed():
    mean, half = sw.mean_ci([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3))
    assert math.isnan(sw.mean_ci([0.4])[1]) and math.isnan(sw.mean_ci([])[0])
    diff, half, n = sw.paired_ci({0: 0.6, 1: 0.7, 2: 0.9}, {0: 0.5, 1: 0.5, 3: 0.1})  # seed 2 / 3 unpaired
    assert n == 2 and diff == pytest.approx(0.15)
    assert half == pytest.approx(stats.t.ppf(0.975, 1) * np.std([0.1, 0.2], ddof=1) / math.sqrt(2))


# -- plans ----------------------------------------------------------------------------------------------------------
def test_training_plan_crosses_methods_draws_seeds_and_cells_with_paired_seeded_draws():
    plan = sw.plan_training(["source_only", "dann"], seeds=[0, 1], draws=3, sources=["synth:lab"],
                            targets=["synth:wild", "synth:lowres"], config={"profile": "tiny"},
                            hparams={"feat_dim": 32})
    runs = {r["key"]: r["params"] for r in plan["runs"]}
    assert len(runs) == 2 * 3 * 2 * 2
    assert runs["dann.synth-lab.synth-wild.d0.s1"]["hparams"] == {"feat_dim": 32}   # draw 0: the defaults
    d2 = runs["dann.synth-lab.synth-lowres.d2.s0"]["hparams"]
    expected = METHODS.get("dann").Hparams.sample(2, feat_dim=32)
    assert d2 == {"lr": expected.lr, "weight_decay": expected.weight_decay, "feat_dim": 32}
    assert runs["source_only.synth-lab.synth-wild.d2.s1"]["hparams"] == d2        # the same draw for every method
    assert runs["dann.synth-lab.synth-wild.d1.s0"]["hparams"]["lr"] != d2["lr"]
    assert sw.plan_training(["dann"], draws=3, config={"profile": "tiny"})["runs"][2]["params"]["hparams"] == \
        sw.draw_hparams("dann", 2)                                                    # reproducible


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": ["nope"]}, "unknown method 'nope'"),
    ({"methods": ["dann"], "config": {"seed": 3}}, "seed cannot be set here"),
    ({"methods": ["dann"], "config": {"stepz": 3}}, "stepz cannot be set here"),
    ({"methods": ["dann"], "hparams": {"nope": 1}}, "unknown hyper-parameter"),
    ({"methods": ["dann"], "targets": ["nosuch:x"]}, "nosuch"),
    ({"methods": ["dann"], "draws": 0}, "draws must be at least 1"),
])
def test_bad_training_plans_are_refused_before_anything_is_written(kwargs, message):
    with pytest.raises((ValueError, KeyError), match=message):
        sw.plan_training(**kwargs)


def test_notebook_plan_checks_names_and_draws_reproducibly(tmp_path):
    nb = make_notebook(tmp_path / "nb.ipynb")
    plan = sw.plan_notebook(nb, grid={"x": [1, 2], "seed": [0, 1, 2]}, draws={"lr": "loguniform:1e-3:1e-1"},
                            n_draws=2, draw_seed=7, fixed={"profile": "tiny"})
    assert len(plan["runs"]) == 12 and len({r["key"] for r in plan["runs"]}) == 12
    lrs = [r["params"]["lr"] for r in plan["runs"]]
    assert all(1e-3 <= v <= 1e-1 for v in lrs) and len(set(lrs)) == 2     # one value per draw index, shared
    assert lrs == [r["params"]["lr"] for r in sw.plan_notebook(nb, grid={"x": [1, 2], "seed": [0, 1, 2]},
                                                               draws={"lr": "loguniform:1e-3:1e-1"}, n_draws=2,
                                                               draw_seed=7, fixed={"profile": "tiny"})["runs"]]
    assert all(r["params"]["profile"] == "tiny" for r in plan["runs"])
    assert {sw.draw_value("int:1:3", 0, i, "k") for i in range(60)} == {1, 2, 3}
    assert {sw.draw_value("choice:a|b", 0, i, "k") for i in range(60)} == {"a", "b"}
    with pytest.raises(ValueError, match="no parameter\\(s\\) depth in its parameters cell; it has: x, lr"):
        sw.plan_notebook(nb, grid={"depth": [1]})
    with pytest.raises(ValueError, match="results_path is set by the sweep"):
        sw.plan_notebook(nb, fixed={"results_path": "x"})
    with pytest.raises(ValueError, match="given more than once"):
        sw.plan_notebook(nb, grid={"x": [1]}, fixed={"x": 2})
    with pytest.raises(ValueError, match="unknown distribution 'normal'"):
        sw.plan_notebook(nb, draws={"lr": "normal:0:1"})
    with pytest.raises(ValueError, match="needs LO <= HI and LO > 0"):
        sw.plan_notebook(nb, draws={"lr": "loguniform:0:1"})


def test_a_folder_takes_its_own_plan_again_but_not_another(tmp_path):
    plan = sw.plan_training(["dann"], seeds=[0], config={"profile": "tiny"})
    sw.create_sweep(tmp_path, plan)
    sw.create_sweep(tmp_path, plan)  # the same sweep again: resumes
    with pytest.raises(ValueError, match="already holds a different sweep"):
        sw.create_sweep(tmp_path, sw.plan_training(["dann"], seeds=[1], config={"profile": "tiny"}))
    with pytest.raises(FileNotFoundError, match="not a sweep folder"):
        sw.load_plan(tmp_path / "elsewhere")


# -- selection rules and the table, on constructed run folders -------------------------------------------------------
def _evals(*rows):
    """metrics.jsonl records: (step, target acc, source_val acc or None)."""
    out = []
    for step, tgt, val in rows:
        e = {"target": {"acc": tgt, "mean_class_acc": tgt}}
        if val is not None:
            e["source_val"] = {"acc": val, "mean_class_acc": val}
        out += [{"step": step, "lr": 0.1, "loss": 1.0}, {"step": step, "eval": e}]
    return out


def test_selection_rules_on_logged_evaluations():
    s = sw.selections(_evals((10, 0.30, 0.80), (20, 0.50, 0.90), (30, 0.40, 0.90)))
    assert s["last"] == {"acc": 0.40, "by": 0.90, "step": 30}
    assert s["source_val"] == {"acc": 0.40, "by": 0.90, "step": 30}      # ties: the later one (as the benchmark)
    assert s["target_test"]["acc"] == 0.50 and s["target_test"]["step"] == 20
    s = sw.selections(_evals((10, 0.30, None), (20, 0.20, None)))        # a trainer without source_val
    assert s["last"]["acc"] == 0.20 and math.isnan(s["last"]["by"]) and math.isnan(s["source_val"]["acc"])
    multi = [{"step": 5, "eval": {"target": {"acc": 0.1}, "source_val/0": {"acc": 0.2}, "source_val/1": {"acc": 0.6}}}]
    assert sw.selections(multi)["source_val"]["by"] == pytest.approx(0.4)  # several sources: their mean


def _fake_run(folder, key, metrics, error=None):
    d = folder / "runs" / key
    d.mkdir(parents=True)
    if error:
        (d / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
        return
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics) + '{"step": 9, "ev')  # cut line
    last = [m for m in metrics if "eval" in m][-1]["eval"]
    (d / "done.json").write_text(json.dumps({"key": key, "seconds": 1.0, "result": {"final": last}}))


def test_the_table_picks_each_methods_best_draw_per_rule_and_keeps_failures(tmp_path):
    plan = sw.plan_training(["source_only", "dann"], seeds=[0, 1], draws=2, config={"profile": "tiny"})
    sw.create_sweep(tmp_path, plan)
    acc = {  # (method, draw, seed) -> [(step, target, source_val)]
        ("source_only", 0, 0): [(5, 0.40, 0.70), (10, 0.50, 0.80)],
        ("source_only", 0, 1): [(5, 0.45, 0.75), (10, 0.55, 0.85)],
        ("source_only", 1, 0): [(5, 0.60, 0.60), (10, 0.62, 0.65)],
        ("source_only", 1, 1): [(5, 0.58, 0.60), (10, 0.64, 0.66)],
        ("dann", 0, 0): [(5, 0.30, 0.90), (10, 0.35, 0.70)],
        ("dann", 1, 0): [(5, 0.70, 0.50), (10, 0.20, 0.50)],
        ("dann", 1, 1): [(5, 0.72, 0.52), (10, 0.22, 0.52)],
    }
    for (m, d, s), rows in acc.items():
        _fake_run(tmp_path, f"{m}.synth-lab.synth-wild.d{d}.s{s}", _evals(*rows))
    _fake_run(tmp_path, "dann.synth-lab.synth-wild.d0.s1", None, error="RuntimeError: CUDA out of memory")
    rep = sw.report(tmp_path)
    assert (rep["done"], rep["failed"], rep["pending"]) == (7, 1, 0)
    best = {(b["rule"], b["method"]): b for b in rep["best"]}
    # last: draw chosen on the last checkpoint's source_val (0.825 vs 0.655 for source-only)
    assert best["last", "source_only"]["draw"] == 0 and best["last", "source_only"]["acc"] == pytest.approx(0.525)
    assert best["last", "source_only"]["chosen_by"] == "source_val"
    # source_val: dann's draw 0 has one done seed (the other failed) and the best source-val score
    assert best["source_val", "dann"]["draw"] == 0 and best["source_val", "dann"]["seeds"] == 1
    assert best["source_val", "dann"]["failed"] == 1 and best["source_val", "dann"]["acc"] == pytest.approx(0.30)
    # target_test: the best target accuracy anywhere in training (the oracle bound)
    assert best["target_test", "dann"]["draw"] == 1 and best["target_test", "dann"]["acc"] == pytest.approx(0.71)
    assert best["target_test", "source_only"]["acc"] == pytest.approx(0.63)
    # paired difference with source-only over the seeds both have
    b = best["target_test", "dann"]
    assert b["vs"] == "source_only" and b["pairs"] == 2 and b["diff"] == pytest.approx(0.08)
    assert b["diff_ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * np.std([0.08, 0.08], ddof=1) / math.sqrt(2))
    md = (tmp_path / "results.md").read_text()
    assert re.search(r"\| dann\.synth-lab\.synth-wild\.d0\.s1 +\| failed +\| RuntimeError: CUDA out of memory", md)
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0].startswith("table,rule,method") and len(lines) == 1 + len(rep["best"]) + 3 * 4
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["failed_runs"] == [{"key": "dann.synth-lab.synth-wild.d0.s1",
                                     "error": "RuntimeError: CUDA out of memory"}]


def test_without_source_val_evaluations_the_table_says_how_last_chose(tmp_path):
    sw.create_sweep(tmp_path, sw.plan_training(["dann"], seeds=[0], draws=2, config={"profile": "tiny"}))
    _fake_run(tmp_path, "dann.synth-lab.synth-wild.d0.s0", _evals((5, 0.3, None)))
    rep = sw.report(tmp_path)
    assert rep["pending"] == 1 and not rep["has_source_val"]
    assert [(b["rule"], b["chosen_by"]) for b in rep["best"]] == [("last", "target_test"),
                                                                  ("target_test", "target_test")]
    assert "No run logged a `source_val` evaluation" in (tmp_path / "results.md").read_text()


# -- real sweeps -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_notebook_sweep_runs_papermill_per_run_and_keeps_the_failure(tmp_path):
    nb = make_notebook(tmp_path / "nb.ipynb")
    sw.create_sweep(tmp_path / "s", sw.plan_notebook(nb, grid={"x": [1, 3]}, fixed={"profile": "tiny"}))
    rep = sw.run_sweep(tmp_path / "s", workers=2, progress=False)
    assert (rep["done"], rep["failed"]) == (1, 1)
    ok = tmp_path / "s" / "runs" / "000-x=1"
    assert {"nb.ipynb", "nb.html", "nb.metrics.json", "done.json", "log.txt"} <= {p.name for p in ok.iterdir()}
    assert (ok / "work").is_dir()  # the notebook's out_dir parameter points into the run folder
    assert rep["groups"][0]["y"]["mean"] == 10.0 and rep["groups"][1]["failed"] == 1
    assert "x=3 is refused" in (tmp_path / "s" / "runs" / "001-x=3" / "error.txt").read_text()
    assert "x=3 is refused" in (tmp_path / "s" / "results.md").read_text()


@pytest.fixture(scope="module")
def reference_sweep(tmp_path_factory):
    """An uninterrupted two-run training sweep: the table every other launcher or resume must reproduce."""
    folder = tmp_path_factory.mktemp("ref") / "sweep"
    sw.create_sweep(folder, sw.plan_training(["source_only", "dann"], seeds=[0], config=TINY))
    sw.run_sweep(folder, workers=2, progress=False)
    return folder


def _table(folder):
    return (folder / "results.csv").read_text(), (folder / "results.md").read_text().replace(folder.name, "")


@pytest.mark.slow
def test_a_training_sweep_writes_runs_progress_and_a_table(reference_sweep):
    rep = sw.report(reference_sweep, write=False)
    assert (rep["done"], rep["failed"]) == (2, 0) and rep["has_source_val"] in (True, False)
    run = reference_sweep / "runs" / "dann.synth-lab.synth-wild.d0.s0"
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "results.json", "done.json"} <= {p.name
                                                                                           for p in run.iterdir()}
    assert "6/6" in (run / "log.txt").read_text()  # the run's own progress bar is in its log
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["resume"] and cfg["out_dir"] == str(run) and cfg["steps"] == 6 and cfg["method"] == "dann"
    assert {b["method"] for b in rep["best"]} == {"source_only", "dann"}


@pytest.mark.slow
def test_a_sweep_killed_mid_run_resumes_to_the_same_table(reference_sweep, tmp_path):
    """A real kill: the sweep's process group gets SIGKILL while the second run trains."""
    folder = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "fer_lab.sweep", "train", str(folder), "--methods", "source_only,dann",
           "--seeds", "0", *TINY_ARGS, "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first, second = (folder / "runs" / f"{m}.synth-lab.synth-wild.d0.s0" for m in ("source_only", "dann"))
    deadline = time.time() + 120
    while not (is_done(folder / "runs", first.name) and (second / "log.txt").is_file()) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert is_done(folder / "runs", first.name) and not is_done(folder / "runs", second.name)
    stamp = (first / "done.json").stat().st_mtime_ns
    assert sw.report(folder)["pending"] == 1  # the table can be rebuilt mid-sweep
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (first / "done.json").stat().st_mtime_ns == stamp          # the finished run did not run again
    assert (first / "log.txt").read_text().count("training source_only") == 1
    assert _table(folder) == _table(reference_sweep)


@pytest.mark.slow
def test_the_slurm_launcher_runs_the_same_plan_through_submitit(reference_sweep, tmp_path):
    """submitit's local executor (subprocesses here; sbatch on a cluster): the same done markers and results."""
    pytest.importorskip("submitit")
    plan = json.loads((reference_sweep / "plan.json").read_text())
    plan["runs"] = [r for r in plan["runs"] if r["params"]["method"] == "dann"]
    folder = tmp_path / "sweep"
    sw.create_sweep(folder, plan)
    rep = sw.run_sweep(folder, launcher="slurm", workers=2, progress=False, cluster="local", poll_s=0.2)
    key = plan["runs"][0]["key"]
    assert rep["done"] == 1 and list((folder / "runs" / ".submitit").iterdir())  # submitit's own job folders
    assert read_result(folder / "runs", key) == read_result(reference_sweep / "runs", key)
    assert rep["records"][0]["selections"] == sw.report(reference_sweep, write=False)["records"][1]["selections"]


def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path, capsys):
    assert sw.main(["notebook", str(make_notebook(tmp_path / "nb.ipynb")), str(tmp_path / "s"),
                    "--grid", "depth=1,2"]) == 2
    assert "no parameter(s) depth" in capsys.readouterr().err
    assert sw.main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a sweep folder" in capsys.readouterr().err
    assert sw.main(["train", str(tmp_path / "t"), "--methods", "dann", "--profile", "tiny", "--plan-only",
                    "--ray-address", "auto"]) == 2
    assert "need --launcher ray" in capsys.readouterr().err
    assert sw.main(["train", str(tmp_path / "t2"), "--methods", "dann", "--seeds", "0,1", "--draws", "2",
                    "--profile", "tiny", "--plan-only"]) == 0
    assert len(sw.load_plan(tmp_path / "t2")["runs"]) == 4
