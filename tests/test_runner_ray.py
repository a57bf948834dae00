"""The ray launcher on a real Ray cluster on 127.0.0.1: runner jobs, a training sweep, a notebook sweep.

The module's cluster is started with ``ray start --head --block`` on a free loopback port (its own process group,
its own temp dir, no dashboard, no usage statistics) and stopped whatever happens; the last test lets the launcher
start a private cluster itself (``ray.init`` on 127.0.0.1), as ``fer-lab sweep --launcher ray`` does without an
address.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fer_lab import sweep as sw
from fer_lab.runner import Job, is_done, read_result, run_jobs

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
# a single-machine cluster: Ray keeps the loopback address instead of swapping in the machine's own
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# the test cluster listens on the loopback address only, so it runs without Ray's token authentication
NO_TOKEN = {"RAY_AUTH_MODE": "disabled"}


def square(x, sleep=0.0):
    import torch

    time.sleep(sleep)
    print(f"squaring {x}")
    return {"y": x * x, "threads": torch.get_num_threads(), "pid": os.getpid()}


def where():
    return {"ip": ray.util.get_node_ip_address()}


def explode():
    raise ValueError("bad cell: no such target")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc):
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):  # the whole group: raylet, gcs, workers
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


@pytest.fixture(scope="module")
def cluster():
    """``ray start --head`` on 127.0.0.1; yields its address; the process group is ended at teardown.
    A start that times out (Ray gives its node 30 s, too little on a loaded machine) is tried again, twice."""
    for attempt in range(3):
        port, temp = _free_port(), tempfile.mkdtemp(prefix="flr-", dir="/tmp")  # short: Ray's socket paths
        env = {**os.environ, **LOOPBACK, **NO_TOKEN, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        log_path = Path(temp) / "start.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                     "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                                     "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
                                     "--object-store-memory=100000000"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while "Ray runtime started" not in log_path.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        if "Ray runtime started" in log_path.read_text():
            break
        _stop(proc)
        if attempt == 2:
            pytest.fail("ray start failed:\n" + log_path.read_text()[-3000:])
        shutil.rmtree(temp, ignore_errors=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


def test_jobs_run_as_ray_tasks_with_the_runner_markers_failures_and_dependencies(cluster, tmp_path):
    jobs = [Job("sq2", "test_runner_ray:square", {"x": 2}, resources={"num_cpus": 1}),
            Job("sq3", "test_runner_ray:square", {"x": 3}, after=("sq2",)),
            Job("bad", "test_runner_ray:explode"), Job("child", "test_runner_ray:square", {"x": 4}, after=("bad",))]
    out = run_jobs(jobs, tmp_path, launcher="ray", workers=2, threads=1, progress=False, address=cluster)
    assert out["sq2"].result["y"] == 4 and out["sq3"].result["y"] == 9 and read_result(tmp_path, "sq3")["y"] == 9
    assert out["sq2"].result["threads"] == 1 and out["sq2"].result["pid"] != os.getpid()
    assert "squaring 3" in (tmp_path / "sq3" / "log.txt").read_text()
    assert out["bad"].status == "failed" and "ValueError: bad cell" in (tmp_path / "bad" / "error.txt").read_text()
    assert out["child"].status == "failed" and "bad, failed" in out["child"].error and not is_done(tmp_path, "child")
    assert not ray.is_initialized()  # the launcher disconnected; the cluster stays up
    again = run_jobs(jobs[:2], tmp_path, launcher="ray", progress=False, address=cluster)
    assert {o.status for o in again.values()} == {"cached"}
    with pytest.raises(ValueError, match="resource\\(s\\) gpus are not Ray task options"):
        run_jobs([Job("g", "test_runner_ray:square", {"x": 1}, resources={"gpus": 1})], tmp_path / "g",
                 launcher="ray", progress=False, address=cluster)


def test_a_training_sweep_through_the_cluster_gives_the_local_launchers_table(cluster, tmp_path):
    args = ["train", "--methods", "dann", "--seeds", "0", "--profile", "tiny", "--steps", "6", "--set", "eval_every=3",
            "--set", "n_train=64", "--set", "n_test=32", "--set", "batch_size=8", "--no-progress"]
    assert sw.main([args[0], str(tmp_path / "ray"), *args[1:], "--launcher", "ray", "--ray-address", cluster,
                    "--workers", "2"]) == 0
    assert not ray.is_initialized() and sw.report(tmp_path / "ray", write=False)["done"] == 1
    assert sw.main([args[0], str(tmp_path / "local"), *args[1:]]) == 0
    assert (tmp_path / "ray" / "results.csv").read_text() == (tmp_path / "local" / "results.csv").read_text()
    md = [(tmp_path / d / "results.md").read_text().split("\n", 1)[1] for d in ("ray", "local")]  # less the title
    assert md[0] == md[1] and "| dann " in md[0]


def test_a_notebook_sweep_through_the_cluster(cluster, tmp_path):
    from test_sweep import make_notebook

    nb = make_notebook(tmp_path / "nb.ipynb")
    sw.create_sweep(tmp_path / "s", sw.plan_notebook(nb, grid={"x": [2, 3]}, fixed={"profile": "tiny"}))
    rep = sw.run_sweep(tmp_path / "s", launcher="ray", workers=2, progress=False, address=cluster)
    assert (rep["done"], rep["failed"]) == (1, 1)
    run = tmp_path / "s" / "runs" / "000-x=2"
    assert json.loads((run / "nb.metrics.json").read_text())["headline"]["y"] == 20 and (run / "nb.html").is_file()
    assert "x=3 is refused" in (tmp_path / "s" / "results.md").read_text()


def test_without_an_address_the_launcher_starts_and_stops_its_own_loopback_cluster(tmp_path):
    temp = tempfile.mkdtemp(prefix="flr-", dir="/tmp")
    try:
        out = run_jobs([Job("sq", "test_runner_ray:square", {"x": 3}), Job("where", "test_runner_ray:where")],
                       tmp_path / "r", launcher="ray", workers=2, progress=False, temp_dir=temp)
        assert out["sq"].result["y"] == 9 and out["where"].result["ip"] == "127.0.0.1"
        assert not ray.is_initialized() and list(Path(temp).glob("session_*"))
    finally:
        shutil.rmtree(temp, ignore_errors=True)
