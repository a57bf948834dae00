"""The job runner: done markers, resume, dependencies, failures kept, fixed thread counts, logs."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fer_lab.runner import Job, JobFailed, is_done, read_result, run_jobs


def square(x, out_dir=None, sleep=0.0):
    import torch

    time.sleep(sleep if x == 0 else float(os.environ.get("SQUARE_SLEEP", sleep)))
    print(f"squaring {x}")
    if out_dir:
        with open(os.path.join(out_dir, "calls.txt"), "a") as f:
            f.write("1")
    return {"y": x * x, "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
            "pid": os.getpid()}


def explode(out_dir=None):
    raise ValueError("bad cell: no such target")


def test_jobs_run_in_fresh_processes_with_the_thread_count_and_write_done_markers(tmp_path):
    jobs = [Job(f"sq{i}", "test_runner:square", {"x": i}) for i in range(3)]
    out = run_jobs(jobs, tmp_path, workers=2, threads=1, progress=False)
    assert {k: o.result["y"] for k, o in out.items()} == {"sq0": 0, "sq1": 1, "sq2": 4}
    assert all(o.status == "done" and o.result["threads"] == 1 and o.result["omp"] == "1" for o in out.values())
    assert os.getpid() not in {o.result["pid"] for o in out.values()}
    assert read_result(tmp_path, "sq2")["y"] == 4
    assert "squaring 2" in (tmp_path / "sq2" / "log.txt").read_text()
    assert json.loads((tmp_path / "sq1" / "job.json").read_text())["kwargs"] == {"x": 1}
    out = run_jobs(jobs, tmp_path, workers=2, progress=False)  # a second run recomputes nothing
    assert {o.status for o in out.values()} == {"cached"} and out["sq1"].result["y"] == 1
    with pytest.raises(ValueError, match="job sq1 is done in .* with other arguments"):
        run_jobs([Job("sq1", "test_runner:square", {"x": 5})], tmp_path, progress=False)
    assert json.loads((tmp_path / "sq1" / "job.json").read_text())["kwargs"] == {"x": 1}   # still what it ran


def test_a_failed_job_is_kept_and_reported_and_its_dependants_do_not_run(tmp_path):
    jobs = [Job("bad", "test_runner:explode"), Job("child", "test_runner:square", {"x": 2}, after=("bad",)),
            Job("ok", "test_runner:square", {"x": 3})]
    out = run_jobs(jobs, tmp_path, progress=False)
    assert out["bad"].status == "failed" and "ValueError: bad cell" in (tmp_path / "bad" / "error.txt").read_text()
    assert out["child"].status == "failed" and "bad, failed" in out["child"].error
    assert out["ok"].status == "done" and not is_done(tmp_path, "bad")
    with pytest.raises(JobFailed, match="2 job\\(s\\) failed: bad, child"):
        run_jobs(jobs, tmp_path, progress=False, raise_on_failure=True)


def test_dependencies_run_first_and_bad_plans_are_refused(tmp_path):
    calls = tmp_path / "order.txt"
    jobs = [Job("b", "test_runner:square", {"x": 2, "out_dir": str(calls.parent)}, after=("a",)),
            Job("a", "test_runner:square", {"x": 1, "sleep": 0.5, "out_dir": str(calls.parent)})]
    out = run_jobs(jobs, tmp_path / "r", workers=2, progress=False)
    assert list(out) == ["a", "b"]
    with pytest.raises(ValueError, match="cycle"):
        run_jobs([Job("x", "m:f", after=("y",)), Job("y", "m:f", after=("x",))], tmp_path, progress=False)
    with pytest.raises(ValueError, match="duplicate job keys: x"):
        run_jobs([Job("x", "m:f"), Job("x", "m:f")], tmp_path, progress=False)
    with pytest.raises(ValueError, match="not 'module:function'"):
        Job("x", "no_colon")


def test_a_killed_run_started_again_runs_only_what_is_not_done(tmp_path):
    """A real kill: the runner process gets SIGKILL while jobs are still running."""
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})
        from fer_lab.runner import Job, run_jobs
        jobs = [Job(f"j{{i}}", "test_runner:square", {{"x": i, "out_dir": {str(tmp_path / 'calls')!r} + str(i)}})
                for i in range(3)]
        run_jobs(jobs, {str(tmp_path / 'root')!r}, workers=1, progress=False)
    """)
    for i in range(3):
        (tmp_path / f"calls{i}").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            env={**os.environ, "SQUARE_SLEEP": "30"})  # j1 and j2 are still running at the kill
    deadline = time.time() + 60
    while not is_done(tmp_path / "root", "j0") and time.time() < deadline:
        time.sleep(0.2)
    assert is_done(tmp_path / "root", "j0")
    os.kill(proc.pid, signal.SIGKILL)          # the runner alone: its worker must not outlive it
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)                # anything left in the runner's process group?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("a worker process outlived the killed runner")
    assert not is_done(tmp_path / "root", "j1")
    jobs = [Job(f"j{i}", "test_runner:square", {"x": i, "out_dir": str(tmp_path / f"calls{i}")}) for i in range(3)]
    out = run_jobs(jobs, tmp_path / "root", workers=1, progress=False)
    assert [out[f"j{i}"].status for i in range(3)] == ["cached", "done", "done"]
    assert (tmp_path / "calls0" / "calls.txt").read_text() == "1"  # never run twice
