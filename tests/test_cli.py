import subprocess
import sys

import pytest

from fer_lab.cli import main


def _cli(*args):
    p = subprocess.run([sys.executable, "-m", "fer_lab", *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--method", "danm"], "unknown method 'danm'; known methods: "),
    (["train", "--backbone", "vgg99"], "unknown backbone 'vgg99'"),
    (["train", "--source", "lab"], "no 'name:' prefix"),
    (["train", "--target", "synth:moon"], "unknown SynthFER domain 'moon'"),
    (["train", "--steps", "0"], "steps must be positive"),
    (["train", "--method", "dann", "--target", "none"], "needs unlabelled target data"),
    (["train", "--hp", "advweight=2", "--method", "dann"], "unknown hyper-parameter(s) advweight"),
    (["train", "--backbone-weights", "/nope/w.pth"], "/nope/w.pth"),
    (["bench", "--hp", "lr=3"], "name the method, as method.key=value"),
    (["bench", "--methods", "dann,danm"], "unknown method 'danm'"),
    (["bench", "--methods", "dann[lr]"], "'lr' is not key=value"),
    (["bench", "--start", "/nope/start.safetensors"], "bench start weights not found: /nope/start.safetensors"),
    (["bench", "--leave-one-out", "synth:lab,synth:wild"], "at least 3 domains"),
])
def test_bad_arguments_give_one_line(args, message, capsys):
    rc = main(args + ["--steps", "1"] if "--steps" not in args else args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("fer-lab: error: ") and message in err and "\n" not in err and "Traceback" not in err


def test_argparse_errors_exit_2():
    rc, _, err = _cli("train", "--profile", "gigantic")
    assert rc == 2 and "invalid choice" in err and "Traceback" not in err


def test_listing_commands():
    rc, out, _ = _cli("methods")
    names = {ln.split()[0] for ln in out.splitlines()}
    assert rc == 0 and {"source_only", "dann", "cdan", "aglrls", "gen_fer", "linear_probe"} <= names
    descriptions = [ln.split(maxsplit=3)[-1] for ln in out.splitlines()]
    assert len(set(descriptions)) == len(descriptions), out    # every method says what it is in its own words
    rc, out, _ = _cli("backbones")
    assert rc == 0 and "smallcnn" in out and "ir50" in out
    rc, out, _ = _cli("datasets")
    assert rc == 0 and "synth" in out


def test_train_prints_results_table(tmp_path):
    rc, out, err = _cli("train", "--method", "cdan", "--steps", "3", "--image-size", "32", "--batch-size", "8",
                        "--n-train", "32", "--n-test", "16", "--out-dir", str(tmp_path), "--no-progress")
    assert rc == 0, err
    assert "| method | eval on | acc" in out and "| cdan" in out and (tmp_path / "results.json").exists()
