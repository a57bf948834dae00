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
