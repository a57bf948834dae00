import pytest
import torch

from fer_lab.models.regions import LAYOUTS, fixed_regions, region_boxes


def test_quadrants_are_the_released_code_crops():
    assert region_boxes("quadrants", 28, 28) == [(0, 14, 0, 14), (0, 14, 14, 28), (14, 28, 0, 14), (14, 28, 14, 28)]
    assert region_boxes("quadrants", 7, 6) == [(0, 3, 0, 3), (0, 3, 3, 6), (3, 7, 0, 3), (3, 7, 3, 6)]


def test_quadrants_pool_each_quarter():
    fmap = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = fixed_regions(fmap, "quadrants")
    assert out.shape == (2, 4, 3)
    want = torch.stack([fmap[:, :, :2, :2], fmap[:, :, :2, 2:], fmap[:, :, 2:, :2], fmap[:, :, 2:, 2:]], 1)
    assert torch.equal(out, want.mean(dim=(3, 4)))
    # every cell is in exactly one quadrant: the mean of the four is the map's mean (even size)
    assert torch.allclose(out.mean(1), fmap.mean(dim=(2, 3)))


def test_regions_are_differentiable():
    fmap = torch.rand(1, 2, 6, 6, requires_grad=True)
    fixed_regions(fmap, "quadrants")[0, 3].sum().backward()
    grad = fmap.grad[0, 0]
    assert (grad[3:, 3:] > 0).all() and (grad[:3] == 0).all() and (grad[:, :3] == 0).all()


def test_bad_input_names_the_file():
    assert "quadrants" in LAYOUTS
    with pytest.raises(ValueError, match="regions.py: unknown region layout 'ninths'"):
        fixed_regions(torch.zeros(1, 1, 4, 4), "ninths")
    with pytest.raises(ValueError, match=r"regions.py: expected a feature map \[B, C, H, W\]"):
        fixed_regions(torch.zeros(4, 4), "quadrants")
    with pytest.raises(ValueError, match="at least 2 x 2"):
        fixed_regions(torch.zeros(1, 1, 1, 4), "quadrants")
