import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _synth_cache(tmp_path_factory):
    """Keep SynthFER's cache inside the test session unless the caller chose a folder."""
    if "FER_LAB_CACHE" not in os.environ:
        os.environ["FER_LAB_CACHE"] = str(tmp_path_factory.mktemp("fer-lab-cache"))
    yield
