import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _synth_cache(tmp_path_factory):
    """Keep SynthFER's cache inside the test session unless the caller chose a folder."""
    if "FER_LAB_CACHE" not in os.environ:
        os.environ["FER_LAB_CACHE"] = str(tmp_path_factory.mktemp("fer-lab-cache"))
    yield


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or use a download helper fails the test."""
    import socket

    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def synth_pair(n: int, seed: int, size: int = 32, split: str = "test"):
    """A small SynthFER lab (domain 0) / wild (domain 1) pair as FaceTensors, for tests."""
    from fer_lab.data.loading import FaceTensors
    from fer_lab.data.spec import load_dataset

    return tuple(FaceTensors(load_dataset(f"synth:{d}?n={n}&size={size}&seed={seed}", split=split), size, domain=i)
                 for i, d in enumerate(("lab", "wild")))


class _Stop(Exception):
    pass


def cut_and_resume(make_cfg, tmp_path, stop_at: int):
    """Train ``make_cfg(out_dir)`` once uninterrupted and once cut after step ``stop_at`` and resumed
    (``make_cfg(out_dir, resume=True)``); returns both results and both final method state dicts."""
    import torch

    from fer_lab.train import Trainer

    full = Trainer(make_cfg(tmp_path / "full")).fit()

    class StopAt:
        def on_step(self, trainer, step, logs):
            if step == stop_at:
                raise _Stop

    with pytest.raises(_Stop):
        Trainer(make_cfg(tmp_path / "cut"), callbacks=[StopAt()]).fit()
    resumed = Trainer(make_cfg(tmp_path / "cut", resume=True)).fit()
    states = [torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)["method"] for run in ("full", "cut")]
    return full, resumed, states[0], states[1]


def notebook_record(key: str, tmp_path) -> dict:
    """One tiny-profile run of notebook ``key`` (e.g. ``"01"``): ``{"metrics", "dirs"}``, where ``dirs`` maps each
    folder parameter the notebook sets by default (``out_dir``, ``bench_dir``) to the folder that run used.

    Every notebook runs once per suite. ``scripts/test.sh`` runs nbval over ``notebooks/`` first (the notebooks'
    defaults, ``FER_LAB_PROFILE=tiny``), after exporting ``FER_LAB_SUITE_START``; each notebook writes its metrics to
    its default ``results_path`` beside it, and a metrics file written since the suite started is that run's. Without
    one (pytest called directly, or the nbval run failed) the notebook runs here with papermill, its folders in
    ``tmp_path``.
    """
    import ast
    import json

    import papermill

    from fer_lab import notebooks as nbs

    path = nbs.discover(only=[key])[0]
    defaults = {k: ast.literal_eval(v["default"]) for k, v in papermill.inspect_notebook(str(path)).items()}
    folders = [k for k in ("out_dir", "bench_dir") if defaults.get(k)]     # the folders the notebook writes by default
    start = os.environ.get("FER_LAB_SUITE_START")
    results = path.parent / defaults["results_path"]
    if start and results.is_file() and results.stat().st_mtime >= float(start):
        metrics = json.loads(results.read_text())
        if metrics.get("profile") == "tiny":
            return {"metrics": metrics, "dirs": {k: path.parent / defaults[k] for k in folders}}
    dirs = {k: tmp_path / k.removesuffix("_dir") for k in folders}
    record = nbs.run_notebook(path, tmp_path / "nb", {"profile": "tiny", "device": "cpu",
                                                      **{k: str(v) for k, v in dirs.items()}},
                              html=False, cell_timeout=300)
    return {"metrics": record["metrics"], "dirs": dirs}
