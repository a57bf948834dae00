"""End to end on the embedded data: the smoke profile, lab -> wild, fixed seed."""

import pytest

from fer_lab.config import TrainConfig
from fer_lab.train import Trainer


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "not yet true: at the smoke budget DANN does not reliably beat source-only on SynthFER lab -> wild "
    "(seed 0: 45.5% vs 55.9%; other seeds and budgets split both ways). Strict: passing makes this test fail "
    "so the marker gets removed."))
def test_dann_beats_source_only_on_lab_to_wild(tmp_path):
    acc = {}
    for method in ("source_only", "dann"):
        cfg = TrainConfig(method=method, source=("synth:lab",), target="synth:wild", profile="smoke", seed=0,
                          out_dir=str(tmp_path / method), progress=False)
        acc[method] = Trainer(cfg).fit().final["target"]["acc"]
    assert acc["dann"] > acc["source_only"], acc
    assert acc["source_only"] > 1 / 7, acc  # the shift is real but the task is learnable
