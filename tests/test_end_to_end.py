"""End to end on the embedded data: the smoke profile, lab -> wild, fixed seed."""

import json

import pytest

from fer_lab.config import TrainConfig
from fer_lab.train import Trainer


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "not true on SynthFER lab -> wild: DANN loses to source-only on all five seeds tried (smoke, 1 thread, "
    "seeds 0-4: 52.9/55.5/57.1/49.9/46.6 % against 44.2/47.4/48.3/38.5/41.8 %) and by more at 1,200 steps "
    "(59.0 vs 43.3 %, 57.2 vs 46.6 %). No setting of the method tried closes the gap: adversarial weight 0.03-1, "
    "GRL steepness 3, discriminator lr x0.1, width 256, no dropout, TLlib's BatchNorm discriminator (collapses "
    "to 14 %), the pre-trained identity backbone. The wild preset's pose shift and label-prior shift are what "
    "defeat marginal alignment: on a target with only wild's appearance (colour, clutter, light, blur, noise; "
    "frontal, balanced, lab expressions) DANN wins 4 of 5 seeds (mean +2.9 points); with wild's pose "
    "and occluders added it trails source-only by 4-6 points. The label prior is not the whole story: IWDAN, "
    "DANN with class-ratio weights, trails too, with estimated weights (seeds 0/1: 51.2/50.0 % against "
    "source-only's 59.7/55.8 %) and even with the true ones (50.4/43.9 %), and DANN trails on a balanced wild "
    "(51.3 vs 54.6 %). Strict: passing makes this test fail so the marker gets removed."))
def test_dann_beats_source_only_on_lab_to_wild(smoke):
    assert smoke["dann"] > smoke["source_only"], smoke
    assert smoke["source_only"] > 1 / 7, smoke  # the shift is real but the task is learnable


def _aglrls_two_stage(tmp_path, steps: int = 400, stage1_fraction: float = 1 / 3, **hparams) -> float:
    """AGLRLS as notebook 01 trains it: stage 1 (source) then stage 2 from its weights, same total budget."""
    s1 = round(steps * stage1_fraction)
    base = dict(method="aglrls", source=("synth:lab",), target="synth:wild", profile="smoke", seed=0, progress=False)
    first = Trainer(TrainConfig(**base, steps=s1, hparams={"stage1_fraction": 1.0}, out_dir=str(tmp_path / "s1")))
    first.fit()
    second = TrainConfig(**base, steps=steps - s1, init_from=str(tmp_path / "s1"),
                         hparams={"stage1_fraction": 0.0, **hparams}, out_dir=str(tmp_path / "s2"))
    return Trainer(second).fit().final["target"]["acc"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Target accuracies on lab -> wild, smoke profile, seed 0, 400 steps each (AGLRLS: 133 + 267), trained once
    for every comparison in this module."""
    tmp = tmp_path_factory.mktemp("e2e")
    acc = {}
    for method in ("source_only", "dann", "cdan"):
        cfg = TrainConfig(method=method, source=("synth:lab",), target="synth:wild", profile="smoke", seed=0,
                          out_dir=str(tmp / method), progress=False)
        acc[method] = Trainer(cfg).fit().final["target"]["acc"]
    acc["aglrls"] = _aglrls_two_stage(tmp / "aglrls")
    acc["aglrls_stage1"] = json.loads((tmp / "aglrls" / "s1" / "results.json").read_text())["final"]["target"]["acc"]
    return acc


@pytest.mark.slow
def test_aglrls_beats_its_stage_one(smoke):
    # stage 2 adapts the stage-1 model (seed 0 on 2 threads: stage 1 36.6 %, AGLRLS 52.4 %)
    assert smoke["aglrls"] > smoke["aglrls_stage1"] + 0.05, smoke


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "not true in general: whether AGLRLS beats the CDAN-E loss it is built on depends on the machine and the seed "
    "at the smoke budget. On one machine image seed 0 gave AGLRLS 52.4 % against CDAN-E 36.9 % (2 threads); on "
    "another, the same code and seed give 42.5 % against 48.2 % (2 threads), and seeds 1 and 2 (one thread) "
    "37.2 % against 50.8 % and 49.1 % against 50.1 %. Strict: passing makes this test fail so the marker gets "
    "re-examined."))
def test_aglrls_beats_cdan_e(smoke):
    assert smoke["aglrls"] > smoke["cdan"], smoke


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "not yet true: at the smoke budget AGLRLS does not beat source-only on SynthFER lab -> wild (seed 0: 52.4 % vs "
    "55.9 %; with 400 + 800 steps against 1,200 they draw level: 59.4 % vs 58.8 %, mean class 57.3 % vs 59.8 %). "
    "Few target faces reach 0.95 confidence, so the "
    "class-wise learning effect stays near 0, every dynamic threshold near its floor 0.24, and the pseudo labels "
    "are accepted at about 44 % precision. Strict: passing makes this test fail so the marker gets removed."))
def test_aglrls_beats_source_only_on_lab_to_wild(smoke):
    assert smoke["aglrls"] > smoke["source_only"], smoke
