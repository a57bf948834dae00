import torch

from fer_lab.labels import EXPRESSIONS
from fer_lab.methods import build_method

from conftest import cut_and_resume, synth_pair

HAPPY, NEUTRAL = EXPRESSIONS.index("happiness"), EXPRESSIONS.index("neutral")


def _batches(n: int = 64):
    src, tgt = synth_pair(n=n, seed=5, split="train")
    s = src.batch(torch.arange(32))
    t = tgt.batch(torch.arange(32))
    t["labels"] = torch.full_like(t["labels"], -1)
    return s, t


def test_with_unit_weights_iwdan_is_dann():
    s, t = _batches()
    torch.manual_seed(0)
    dann = build_method("dann", {"lr": 0.02})
    torch.manual_seed(0)
    iwdan = build_method("iwdan", {"lr": 0.02, "iw_every": 1000})  # no solve: w stays 1
    for step in range(3):
        torch.manual_seed(step)  # the same dropout masks in both discriminators
        a = dann.update(s, t, 0.5)
        torch.manual_seed(step)
        b = iwdan.update(s, t, 0.5)
        for key in ("loss", "cls", "adv"):
            assert abs(a[key] - b[key]) < 1e-5, (step, key, a[key], b[key])
    assert all(b[f"w_{c}"] == 1.0 for c in EXPRESSIONS)
    for (name, p), q in zip(dann.named_parameters(), iwdan.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=name)


def test_weights_follow_a_skewed_target_prior():
    """Constructed statistics: a perfect source classifier on a balanced source and a target of happiness and
    neutral only. The solved weights are p_T / p_S (3.5 for the two, 0 for the rest) and the update uses them."""
    eye = torch.eye(7)
    src_labels = torch.arange(7).repeat(10)
    tgt = torch.tensor([HAPPY, NEUTRAL]).repeat(35)
    m = build_method("iwdan", {"iw_every": 1000})
    m.importance.observe(eye[src_labels], src_labels, eye[tgt])
    w = m.importance.refresh(ma=0.0)
    expected = torch.zeros(7)
    expected[[HAPPY, NEUTRAL]] = 3.5
    torch.testing.assert_close(w, expected, atol=1e-3, rtol=0)
    s, t = _batches()
    logs = m.update(s, t, 0.5)
    assert logs["w_happiness"] == float(m.importance.weights[HAPPY]) == float(w[HAPPY])
    assert abs(logs["w_fear"]) < 1e-6


def test_refresh_schedule_is_one_target_epoch_and_resumes():
    s, t = _batches()
    m = build_method("iwdan")
    m.setup_data([2000], 2000, 32)
    assert m.refresh_every == 62
    assert build_method("iwdan", {"iw_every": 5}).refresh_every == 5
    m.update(s, t, 0.1)
    state = m.state_dict()
    # one step of statistics: 32 source softmax rows (float32, so each sums to 1 within rounding)
    assert int(state["importance.steps"]) == 1 and abs(float(state["importance.joint"].sum()) - 32) < 1e-4
    other = build_method("iwdan")
    other.load_state_dict(state)
    assert torch.equal(other.importance.joint, m.importance.joint)


def test_resume_mid_epoch_equals_uninterrupted(tmp_path):
    """The weights and the half-gathered statistics of C and mu travel with the checkpoint: a run cut between two
    solves and resumed ends exactly as an uninterrupted one."""
    from fer_lab.config import TrainConfig

    def cfg(out, **kw):  # 64 target faces, batch 16: a solve every 4 steps
        return TrainConfig(method="iwdan", profile="tiny", steps=12, n_train=64, n_test=32, batch_size=16,
                           checkpoint_every=6, eval_every=12, log_every=2, progress=False, out_dir=str(out), **kw)

    # cut after the step-6 checkpoint, which holds the statistics of steps 5-6
    full, resumed, a, b = cut_and_resume(cfg, tmp_path, stop_at=7)
    assert resumed.final == full.final
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["importance.steps"]) == 12 and not torch.equal(a["importance.weights"], torch.ones(7))
