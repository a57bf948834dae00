import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _synth_cache(tmp_path_factory):
    """Keep SynthFER's cache inside the test session unless the caller chose a folder."""
    if "FER_LAB_CACHE" not in os.environ:
        os.environ["FER_LAB_CACHE"] = str(tmp_path_factory.mktemp("fer-lab-cache"))
    yield


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
