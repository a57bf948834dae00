"""Backbones: registry, shapes at 64 and 112 px, local weights round trip, no network."""

from __future__ import annotations

import math

import pytest
import torch

from fer_lab.models import BACKBONES, Backbone, build_backbone
from fer_lab.models.backbones import IRNet

pytestmark = pytest.mark.usefixtures("no_network")   # every test here runs offline (tests/conftest.py)

EXPECTED = {"smallcnn", "resnet18", "resnet50", "ir18", "ir50", "efficientnet_lite0"}
#: keyword arguments for a random start, where the default loads real weights from an installed package
RANDOM_INIT = {"efficientnet_lite0": {"pretrained": False}}


def test_dann_digits_net_is_the_papers_two_conv_blocks():
    net = build_backbone("dann_digits")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(3, 32, (5, 5)), (32, 48, (5, 5))]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    mid, last = net(torch.rand(2, 3, 32, 32))
    assert mid.shape == (2, 32, 16, 16) and last.shape == (2, 48, 8, 8)


def test_backbone_spec_options_reach_the_constructor():
    from fer_lab.models.backbones import parse_backbone_spec

    assert parse_backbone_spec("smallcnn?batch_norm=false&widths=[8,16,32,64]") == (
        "smallcnn", {"batch_norm": False, "widths": [8, 16, 32, 64]})
    plain = build_backbone("smallcnn?batch_norm=false&widths=[8,16,32,64]")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert all(c.bias is not None for c in plain.modules() if isinstance(c, torch.nn.Conv2d))
    mid, last = plain(torch.rand(2, 3, 64, 64))
    assert mid.shape == (2, 16, 16, 16) and last.shape == (2, 64, 4, 4)
    with pytest.raises(ValueError, match="smallcnn\\?depth=3"):
        build_backbone("smallcnn?depth=3")
    with pytest.raises(ValueError, match="not key=value"):
        build_backbone("smallcnn?batch_norm")


def test_registry_has_all_backbones():
    assert EXPECTED <= set(BACKBONES.names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("size", [64, 112])
def test_shapes(name, size):
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    assert isinstance(net, Backbone)
    with torch.no_grad():
        mid, last = net(torch.rand(2, 3, size, size))
    assert mid.shape == (2, net.mid_channels, size // net.mid_stride, size // net.mid_stride)
    h = math.ceil(size / net.out_stride)
    assert last.shape == (2, net.out_channels, h, h)
    assert torch.isfinite(mid).all() and torch.isfinite(last).all()


def test_ir50_benchmark_geometry():
    """IR-50 at 112 px: stage-2 map 128 x 28 x 28, stage-4 map 512 x 7 x 7 (CD-FER benchmark)."""
    net = build_backbone("ir50")
    assert (net.mid_channels, net.mid_stride, net.out_channels) == (128, 4, 512)
    assert net.units == (3, 4, 14, 3)
    assert build_backbone("ir18").units == (2, 2, 2, 2)


def test_normalises_internally():
    """The first op is ImageNet normalisation; its buffers are not part of the state dict."""
    net = build_backbone("smallcnn")
    x = torch.full((1, 3, 2, 2), 0.5)
    y = net.normalize(x)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(y[0, :, 0, 0], (0.5 - mean) / std)
    assert not any("pixel_" in k for k in net.state_dict())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_weights_round_trip(name, tmp_path):
    kw = RANDOM_INIT.get(name, {})
    torch.manual_seed(1)
    src = build_backbone(name, **kw).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(src.state_dict(), path)
    torch.manual_seed(2)
    fresh = build_backbone(name, **kw).eval()
    dst = build_backbone(name, weights=str(path), **kw).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b, c = src(x), dst(x), fresh(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[1], c[1])  # random init differs, so the equality above is meaningful


def test_safetensors_and_wrapped_checkpoints(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    src = build_backbone("smallcnn").eval()
    x = torch.rand(1, 3, 64, 64)
    p1 = tmp_path / "w.safetensors"
    st.save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(p1))
    p2 = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}, "epoch": 3}, p2)
    with torch.no_grad():
        ref = src(x)[1]
        for p in (p1, p2):
            assert torch.equal(build_backbone("smallcnn", weights=p).eval()(x)[1], ref)


def test_torchvision_fc_keys_dropped(tmp_path):
    """A full torchvision ResNet state dict (with fc) loads into the trunk."""
    from torchvision.models.resnet import BasicBlock, ResNet

    full = ResNet(BasicBlock, [2, 2, 2, 2])
    path = tmp_path / "resnet18_full.pth"
    torch.save(full.state_dict(), path)
    net = build_backbone("resnet18", weights=path)
    assert torch.equal(net.conv1.weight, full.conv1.weight)
    assert torch.equal(net.layer4[1].bn2.running_var, full.layer4[1].bn2.running_var)


def test_ir_checkpoint_key_styles(tmp_path):
    """face.evoLVe names (body.<i>, output_layer dropped) and CD-FER benchmark names (layer<k>.<j>) both load."""
    src = IRNet((2, 2, 2, 2))
    sd = src.state_dict()
    evolve = dict(sd, **{"output_layer.3.weight": torch.zeros(512, 512)})
    offsets = [0, 2, 4, 6]
    bench = {}
    for k, v in sd.items():
        if k.startswith("body."):
            _, i, rest = k.split(".", 2)
            stage = max(s for s in range(4) if offsets[s] <= int(i))
            bench[f"layer{stage + 1}.{int(i) - offsets[stage]}.{rest}"] = v
        else:
            bench[k] = v
    bench["Crop_Net.0.0.res_layer.0.weight"] = torch.zeros(3)
    bench["fc.weight"] = torch.zeros(7, 384)
    for i, d in enumerate((evolve, bench)):
        path = tmp_path / f"ir18_{i}.pth"
        torch.save(d, path)
        net = build_backbone("ir18", weights=path)
        for k, v in sd.items():
            assert torch.equal(net.state_dict()[k], v), k


def test_missing_weights_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "backbone_ir50_ms1m_epoch120.pth"
    with pytest.raises(FileNotFoundError, match="backbone_ir50_ms1m_epoch120.pth"):
        build_backbone("ir18", weights=str(missing))


def test_mismatched_weights_fail(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(build_backbone("smallcnn").state_dict(), path)
    with pytest.raises(RuntimeError):
        build_backbone("resnet18", weights=path)


def test_unknown_backbone():
    with pytest.raises(KeyError, match="smallcnn"):
        build_backbone("vgg99")


def test_smallcnn_trains_fast():
    """One forward + backward step at batch 32, 64 x 64 stays well under a second on CPU."""
    import time

    torch.manual_seed(0)
    net = build_backbone("smallcnn")
    x = torch.rand(32, 3, 64, 64)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        opt.zero_grad()
        mid, last = net(x)
        (last.mean() + mid.mean()).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    assert min(times) < 2.0
