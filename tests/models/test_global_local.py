"""Landmark patches (batched RoIAlign vs the reference loop) and the seven-stream extractor."""

from __future__ import annotations

import pytest
import torch

from fer_lab.labels import FLIP_PERMUTATION, LANDMARKS, STREAMS
from fer_lab.models import (
    GlobalLocalExtractor,
    build_backbone,
    build_extractor,
    crop_patches,
    crop_patches_loop,
    landmark_cells,
)
from fer_lab.models.global_local import CropNet, LocalHead


def _landmarks(b: int, size_px: float, gen: torch.Generator, margin: float = 0.0) -> torch.Tensor:
    """Random landmarks, a third of them within a few pixels of (or beyond) the border."""
    lm = torch.rand(b, 5, 2, generator=gen) * (size_px + 2 * margin) - margin
    edge = torch.rand(b, 5, 2, generator=gen) < 0.3
    near = torch.where(torch.rand(b, 5, 2, generator=gen) < 0.5, torch.rand(b, 5, 2, generator=gen) * 6,
                       size_px - torch.rand(b, 5, 2, generator=gen) * 6)
    return torch.where(edge, near, lm)


@pytest.mark.parametrize("clamp", [True, False])
@pytest.mark.parametrize("shape,stride,cells", [((28, 28), 4, 7), ((16, 16), 4, 7), ((14, 10), 8, 5),
                                                  ((12, 12), 2, 6), ((5, 5), 8, 7)])
def test_crop_matches_loop(clamp, shape, stride, cells):
    gen = torch.Generator().manual_seed(hash((clamp, shape, cells)) % 2**31)
    h, w = shape
    fm = torch.randn(6, 8, h, w, generator=gen)
    lm = _landmarks(6, max(h, w) * stride, gen, margin=2 * stride if not clamp else 0)
    fast = crop_patches(fm, lm, stride, cells, clamp)
    ref = crop_patches_loop(fm, lm, stride, cells, clamp)
    assert fast.shape == (6, 5, 8, cells, cells)
    assert torch.allclose(fast, ref, atol=1e-6, rtol=0)


def test_crop_gradient_matches_loop():
    gen = torch.Generator().manual_seed(0)
    fm = torch.randn(4, 3, 28, 28, generator=gen)
    lm = _landmarks(4, 112, gen, margin=8)
    g = torch.randn(4, 5, 3, 7, 7, generator=gen)
    grads = []
    for fn in (crop_patches, crop_patches_loop):
        x = fm.clone().requires_grad_(True)
        fn(x, lm, 4, 7, False).backward(g)
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_benchmark_clamp_range():
    """7 x 7 on a 28 grid: centre cells clamped to [3, 24], as the benchmark's Dataset.py."""
    lm = torch.tensor([[[0.0, 111.9], [5.0, 50.0], [111.0, 0.0], [60.0, 99.0], [-20.0, 200.0]]])
    cells = landmark_cells(lm, 4, (28, 28), 7)
    assert cells.tolist() == [[[3, 24], [3, 12], [24, 3], [15, 24], [3, 24]]]
    assert landmark_cells(lm, 4, (28, 28), 7, clamp=False)[0, 0].tolist() == [0, 27]


def test_unclamped_border_patch_is_zero_padded():
    fm = torch.ones(1, 2, 28, 28)
    lm = torch.zeros(1, 5, 2)  # all at the top-left pixel -> cell (0, 0)
    patch = crop_patches(fm, lm, 4, 7, clamp=False)[0, 0, 0]
    assert patch[3:, 3:].eq(1).all() and patch[:3].eq(0).all() and patch[:, :3].eq(0).all()


def test_flipped_landmarks_pick_mirrored_cells():
    gen = torch.Generator().manual_seed(3)
    stride, size = 4, 28
    fm = torch.randn(3, 4, size, size, generator=gen)
    cells = torch.randint(0, size, (3, 5, 2), generator=gen).float()
    lm = (cells + 0.5) * stride  # cell centres
    flipped_lm = lm.clone()
    flipped_lm[..., 0] = size * stride - lm[..., 0]
    flipped_lm = flipped_lm[:, list(FLIP_PERMUTATION)]  # a flip swaps left/right landmarks
    for clamp in (True, False):
        a = crop_patches(fm, lm, stride, 7, clamp)
        b = crop_patches(fm.flip(-1), flipped_lm, stride, 7, clamp)
        assert torch.equal(b, a[:, list(FLIP_PERMUTATION)].flip(-1))


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return build_extractor("smallcnn", feat_dim=16)


def test_extractor_streams(extractor):
    assert extractor.streams == STREAMS
    x = torch.rand(4, 3, 64, 64)
    lm = torch.rand(4, 5, 2) * 64
    out = extractor(x, lm)
    assert list(out) == list(STREAMS)
    for name in STREAMS:
        assert out[name].shape == (4, extractor.stream_dim(name))
    assert extractor.stream_dim("fused") == 6 * 16 and extractor.stream_dim("nose") == 16
    parts = torch.cat([out[s] for s in STREAMS[:-1]], 1)
    assert torch.equal(out["fused"], parts)
    with pytest.raises(KeyError):
        extractor.stream_dim("chin")


def test_global_grid_keeps_the_layout_of_the_last_map():
    """grid g: the global stream is the g x g average-pooled map, flattened (feat_dim * g^2); grid 1 is GAP."""
    torch.manual_seed(0)
    ext = build_extractor("smallcnn", feat_dim=16, global_grid=2)
    assert ext.stream_dim("global") == 64 and ext.stream_dim("fused") == 64 + 5 * 16
    x, lm = torch.rand(3, 3, 64, 64), torch.rand(3, 5, 2) * 64
    out = ext(x, lm)
    assert out["global"].shape == (3, 64) and out["fused"].shape == (3, 144)
    _, last = ext.backbone(x)
    conv_relu = ext.global_head[1](ext.global_head[0](last))             # [3, 16, 4, 4]
    cells = conv_relu.reshape(3, 16, 2, 2, 2, 2).mean((3, 5))            # the four 2 x 2 quadrants' means
    assert torch.allclose(out["global"], cells.flatten(1), atol=1e-6)
    gap = build_extractor("smallcnn", feat_dim=16)
    gap.load_state_dict(ext.state_dict())                                # same parameters, only the pooling differs
    assert torch.allclose(gap(x, lm)["global"], cells.mean((2, 3)), atol=1e-6)
    with pytest.raises(ValueError, match="grid"):
        build_extractor("smallcnn", global_grid=0)


def test_gradient_reaches_backbone_from_every_local_stream(extractor):
    x = torch.rand(2, 3, 64, 64)
    lm = torch.rand(2, 5, 2) * 64
    out = extractor(x, lm)
    bb = extractor.backbone
    for k, name in enumerate(LANDMARKS):
        extractor.zero_grad(set_to_none=True)
        out[name].sum().backward(retain_graph=True)
        assert bb.stage1[0][0].weight.grad is not None and bb.stage1[0][0].weight.grad.abs().sum() > 0, name
        assert bb.stage4[0][0].weight.grad is None  # local streams come from the mid map only
        for j, head in enumerate(extractor.local_heads):  # and only through their own head
            assert (head[0].weight.grad is not None) == (j == k)


def test_extractor_112_ir18_heavy_heads():
    torch.manual_seed(0)
    ext = GlobalLocalExtractor(build_backbone("ir18"), feat_dim=64, heavy_heads=True).eval()
    assert all(isinstance(h, CropNet) for h in ext.local_heads)
    with torch.no_grad():
        out = ext(torch.rand(1, 3, 112, 112), torch.rand(1, 5, 2) * 112)
    assert out["fused"].shape == (1, 384)
    light = build_extractor("ir18")
    assert all(isinstance(h, LocalHead) for h in light.local_heads)
    n_heavy = sum(p.numel() for p in ext.local_heads.parameters())
    n_light = sum(p.numel() for p in light.local_heads.parameters())
    assert n_light * 5 < n_heavy


def test_build_extractor_with_weights(tmp_path):
    bb = build_backbone("smallcnn")
    path = tmp_path / "bb.pth"
    torch.save(bb.state_dict(), path)
    ext = build_extractor("smallcnn", weights=str(path), patch_cells=5)
    assert ext.patch_cells == 5
    assert torch.equal(ext.backbone.stage1[0][0].weight, bb.stage1[0][0].weight)


def test_crop_half_precision_large_batch():
    """bfloat16 maps with batch > 256 still pick the right sample (boxes are built in float32)."""
    gen = torch.Generator().manual_seed(5)
    fm = torch.randn(300, 2, 8, 8, generator=gen).to(torch.bfloat16)
    lm = torch.rand(300, 5, 2, generator=gen) * 32
    fast = crop_patches(fm, lm, 4, 3)
    assert fast.dtype == torch.bfloat16
    assert torch.equal(fast, crop_patches_loop(fm, lm, 4, 3))
