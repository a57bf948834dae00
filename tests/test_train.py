import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fer_lab.config import TrainConfig
from fer_lab.train import LR_SCHEDULES, Trainer, load_run, load_split

TINY = ["--image-size", "32", "--batch-size", "16", "--n-train", "128", "--n-test", "64", "--log-every", "5",
        "--eval-every", "50", "--checkpoint-every", "10", "--no-progress"]


def _run(out, steps, *extra):
    cmd = [sys.executable, "-m", "fer_lab", "train", "--method", "dann", "--steps", str(steps), "--out-dir", str(out),
           *TINY, *extra]
    # one thread each: the two runs go side by side, and OpenMP threads of two processes fighting over two cores
    # slow both by orders of magnitude
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _checkpoint_step(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["step"]
    except Exception:
        return None


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    steps = 120
    full = _run(tmp_path / "full", steps)
    killed = _run(tmp_path / "killed", steps)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        s = _checkpoint_step(ckpt) if ckpt.exists() else None
        if s is not None and s >= 20:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, (
        f"the run ended (status {killed.returncode}) before it could be killed: {killed.stderr.read().decode()[-2000:]}")
    killed_at = _checkpoint_step(ckpt)
    assert 20 <= killed_at < steps
    resumed = _run(tmp_path / "killed", steps, "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err.decode()
    assert full.wait(timeout=600) == 0, full.stderr.read().decode()

    a = json.loads((tmp_path / "full" / "results.json").read_text())["final"]
    b = json.loads((tmp_path / "killed" / "results.json").read_text())["final"]
    assert a == b  # same accuracies, per-class figures and confusion matrix
    la = (tmp_path / "full" / "metrics.jsonl").read_text()
    lb = (tmp_path / "killed" / "metrics.jsonl").read_text()
    assert la == lb  # every logged loss identical, no duplicate lines after the resume
    sa = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["method"]
    sb = torch.load(ckpt, weights_only=True)["method"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_refuses_a_different_config(tmp_path):
    cfg = TrainConfig(method="source_only", steps=4, image_size=32, batch_size=8, n_train=32, n_test=16,
                      out_dir=str(tmp_path), progress=False, checkpoint_every=2)
    Trainer(cfg).fit()
    other = TrainConfig(**{**cfg.to_dict(), "seed": 5, "resume": True})
    with pytest.raises(ValueError, match="different config.*seed"):
        Trainer(other).fit()


def test_run_files_and_reload(tmp_path):
    cfg = TrainConfig(method="source_only", steps=6, image_size=32, batch_size=8, n_train=32, n_test=16,
                      out_dir=str(tmp_path), progress=False, log_every=2, eval_every=3)
    result = Trainer(cfg).fit()
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "loss" in l] == [2, 4, 6]
    assert [l["step"] for l in lines if "eval" in l] == [3, 6]
    final = json.loads((tmp_path / "results.json").read_text())["final"]["target"]
    assert final["n"] == 16 and len(final["confusion"]) == 7 and sum(map(sum, final["confusion"])) == 16
    method, _ = load_run(tmp_path)
    from fer_lab.evaluate import evaluate

    assert evaluate(method, load_split(cfg, cfg.target, "test", 1))["acc"] == result.final["target"]["acc"]


def test_target_labels_are_hidden_from_methods(tmp_path):
    seen = []

    class Spy:
        def on_step(self, trainer, step, logs):
            _, target = trainer.batches(step)
            seen.append((target["labels"].unique().tolist(), (target["true_labels"] >= 0).all().item()))

    cfg = TrainConfig(method="dann", steps=2, image_size=32, batch_size=8, n_train=32, n_test=16,
                      out_dir=str(tmp_path), progress=False)
    Trainer(cfg, callbacks=[Spy()]).fit()
    assert seen and all(labels == [-1] and truth for labels, truth in seen)


def test_lr_schedules():
    for name, f in LR_SCHEDULES.items():
        assert f(0.0) == 1.0, name
        assert f(1.0) <= f(0.5) <= 1.0, name
    assert abs(LR_SCHEDULES["inv"](1.0) - 11 ** -0.75) < 1e-12


def test_trainer_sets_group_lrs_from_schedule(tmp_path):
    cfg = TrainConfig(method="dann", steps=2, image_size=32, batch_size=8, n_train=32, n_test=16,
                      out_dir=str(tmp_path), progress=False, hparams={"lr": 0.1, "disc_lr_mult": 10.0})
    t = Trainer(cfg)
    t.setup()
    t.set_lr(1.0)
    lrs = sorted(g["lr"] for g in t.method.optimizer.param_groups)
    f = LR_SCHEDULES["inv"](1.0)
    assert lrs == pytest.approx([0.1 * f, 0.1 * f, 1.0 * f])


def test_source_val_is_evaluated_alongside_the_target(tmp_path):
    cfg = TrainConfig(method="source_only", source=("synth:lab", "synth:lowres"), steps=4, image_size=32,
                      batch_size=8, n_train=32, n_test=16, out_dir=str(tmp_path), progress=False, eval_every=2,
                      source_val=True)
    result = Trainer(cfg).fit()
    evals = [h["eval"] for h in result.history if "eval" in h]
    assert len(evals) == 2 and all(set(e) == {"target", "source_val/0", "source_val/1"} for e in evals)
    assert result.final["source_val/0"]["n"] == 16


def test_init_from_a_source_only_run_starts_only_the_named_modules_fresh(tmp_path):
    base = dict(steps=2, image_size=32, batch_size=8, n_train=32, n_test=16, progress=False, eval_every=2)
    s1 = Trainer(TrainConfig(method="source_only", target=None, out_dir=str(tmp_path / "s1"), **base)).fit()
    t = Trainer(TrainConfig(method="dann", out_dir=str(tmp_path / "s2"), init_from=str(s1.out_dir), **base))
    t.setup()
    stage1 = torch.load(tmp_path / "s1" / "checkpoint.pt", weights_only=True)["method"]
    assert torch.equal(t.method.state_dict()["classifier.weight"], stage1["classifier.weight"])
    assert t.init_fresh and all(k.startswith(("discriminator.", "grl.")) for k in t.init_fresh)
    t.fit()
    assert json.loads((tmp_path / "s2" / "config.json").read_text())["init_fresh"] == t.init_fresh
    # AGLRLS: the fused head starts from the source-only classifier, the other heads fresh
    a = Trainer(TrainConfig(method="aglrls", out_dir=str(tmp_path / "a"), init_from=str(s1.out_dir), **base))
    a.setup()
    assert torch.equal(a.method.heads["fused"].weight, stage1["classifier.weight"])
    assert "heads.global.weight" in a.init_fresh and not any(k.startswith("extractor.") for k in a.init_fresh)


def _aglrls_cfg(out, resume=False):
    # 8 steps, the first quarter source-only: the transfer stage records every step (AGLRLS.recorder)
    return TrainConfig(method="aglrls", steps=8, image_size=32, batch_size=8, n_train=32, n_test=16, eval_every=4,
                       checkpoint_every=4, out_dir=str(out), progress=False, resume=resume,
                       hparams={"stage1_fraction": 0.25})


def test_a_method_recorder_writes_its_records_to_the_run_folder(tmp_path):
    from fer_lab.pseudo import PseudoLabelHistory
    from fer_lab.train import load_diagnostics

    watcher = PseudoLabelHistory(every=1)          # the same records, gathered by a callback of the caller
    Trainer(_aglrls_cfg(tmp_path / "run"), callbacks=[watcher]).fit()
    records = load_diagnostics(tmp_path / "run")
    assert [r["step"] for r in records] == [3, 4, 5, 6, 7, 8]
    assert records == json.loads(json.dumps(watcher.records))
    assert set(records[0]["thresholds"]) == {"global", "left_eye", "right_eye", "nose", "mouth_left", "mouth_right",
                                             "fused"}


def test_a_resumed_run_keeps_its_records_up_to_the_checkpoint_and_is_not_changed_by_them(tmp_path):
    from conftest import cut_and_resume
    from fer_lab.train import load_diagnostics

    full, resumed, s_full, s_cut = cut_and_resume(_aglrls_cfg, tmp_path, stop_at=6)
    a, b = load_diagnostics(tmp_path / "full"), load_diagnostics(tmp_path / "cut")
    assert [r["step"] for r in b] == [3, 4, 5, 6, 7, 8]           # nothing from the cut run's steps 5-6 twice
    assert b[:2] == a[:2]                                          # up to the checkpoint at step 4: kept as written
    assert all(torch.equal(s_full[k], s_cut[k]) for k in s_full)
    assert resumed.final["target"]["acc"] == full.final["target"]["acc"]


def test_load_diagnostics_names_the_missing_file(tmp_path):
    from fer_lab.train import load_diagnostics

    Trainer(TrainConfig(method="source_only", steps=2, image_size=32, batch_size=8, n_train=32, n_test=16,
                        out_dir=str(tmp_path), progress=False)).fit()
    with pytest.raises(FileNotFoundError, match="diagnostics.jsonl"):
        load_diagnostics(tmp_path)
