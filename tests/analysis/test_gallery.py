import numpy as np
from PIL import Image

from fer_lab.analysis.gallery import class_grid, write_galleries
from fer_lab.cli import main
from fer_lab.data.synth import make_synthfer
from fer_lab.labels import EXPRESSIONS


def test_class_grid_holds_each_class_in_its_row():
    d = make_synthfer("lab", n=28, size=32, split="test", cache=False)
    grid = class_grid(d, per_class=2)
    assert grid.shape == (len(EXPRESSIONS) * 32, 70 + 2 * 32, 3) and grid.dtype == np.uint8
    for c in range(len(EXPRESSIONS)):
        for k in range(2):
            cell = grid[c * 32:(c + 1) * 32, 70 + k * 32:70 + (k + 1) * 32]
            same = [i for i in range(len(d)) if np.array_equal(d.images[i], cell)]
            assert same and all(d.labels[i] == c for i in same)


def test_synth_gallery_command_writes_one_png_per_domain(tmp_path, capsys):
    assert main(["synth", "gallery", "--out", str(tmp_path), "--domains", "lab,profile", "--per-class", "1",
                 "--size", "32"]) == 0
    for dom in ("lab", "profile"):
        im = Image.open(tmp_path / f"synthfer_{dom}.png")
        assert im.size == (70 + 32, 7 * 32)
    assert "profile:" in capsys.readouterr().out
    assert main(["synth", "gallery", "--domains", "moon", "--out", str(tmp_path)]) == 2
    assert "unknown SynthFER domain(s) moon" in capsys.readouterr().err
    assert set(write_galleries(str(tmp_path / "w"), ("lowres",), 1, 32)) == {"lowres"}
