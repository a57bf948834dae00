"""Frozen encoders: CLIP image towers read from local files (round trips on tiny CLIPs built here), the frozen
wrapper's guarantees, and the encoder specs."""

import json

import pytest
import torch
from torch import nn

from fer_lab.models.frozen import (FROZEN_ENCODERS, FrozenEncoder, build_frozen_encoder, load_clip_image_tower,
                                   weights_digest)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# a tiny open_clip CLIP: widths of 64 so that OpenAI-format loading (heads = width / 64) infers it from the weights
TINY_OPEN_CLIP = {"embed_dim": 16, "quick_gelu": True,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
                  "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 64, "heads": 1, "layers": 1}}


def _tiny_open_clip():
    from open_clip.model import CLIP

    torch.manual_seed(0)
    return CLIP(**TINY_OPEN_CLIP).eval()


def _tiny_hf_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            image_size=32, patch_size=8, projection_dim=24)


@pytest.fixture
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_transformers_vision_folder_round_trip(tmp_path, images):
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(0)
    ref = CLIPVisionModelWithProjection(_tiny_hf_vision_config()).eval()
    ref.save_pretrained(tmp_path / "hf")
    enc = load_clip_image_tower(tmp_path / "hf")
    with torch.no_grad():
        want = ref(pixel_values=(images - IMAGENET_MEAN) / IMAGENET_STD).image_embeds
    assert enc.dim == 24 and enc.input_size == 32 and enc.normalize == "imagenet"
    torch.testing.assert_close(enc(images), want)


def test_transformers_full_clip_folder_gives_the_image_features(tmp_path, images):
    from transformers import CLIPConfig, CLIPModel

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    ref = CLIPModel(CLIPConfig(text_config=text, vision_config=_tiny_hf_vision_config().to_dict(),
                               projection_dim=24)).eval()
    ref.save_pretrained(tmp_path / "clip")
    enc = load_clip_image_tower(tmp_path / "clip", normalize="clip")
    with torch.no_grad():
        want = ref.get_image_features(pixel_values=enc.prepare(images))
    want = want if isinstance(want, torch.Tensor) else want.pooler_output
    torch.testing.assert_close(enc(images), want)
    # without the projection: the pooled output of a CLIPVisionModel
    plain = load_clip_image_tower(tmp_path / "clip", projection=False)
    assert plain.dim == 32


def test_open_clip_local_dir_round_trip(tmp_path, images):
    from safetensors.torch import save_file

    ref = _tiny_open_clip()
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
    save_file(ref.state_dict(), str(folder / "open_clip_model.safetensors"))
    enc = build_frozen_encoder(f"clip:{folder}?normalize=clip")
    with torch.no_grad():
        want = ref.encode_image(enc.prepare(images))
    assert enc.dim == 16 and enc.normalize == "clip"
    torch.testing.assert_close(enc(images), want)


def test_openai_format_checkpoint_file_round_trip(tmp_path, images):
    ref = _tiny_open_clip()
    torch.save(ref.state_dict(), tmp_path / "ViT-tiny.pt")       # as OpenAI's state dicts are laid out
    enc = load_clip_image_tower(tmp_path / "ViT-tiny.pt", size=32)
    with torch.no_grad():
        want = ref.encode_image(enc.prepare(images))
    assert enc.dim == 16
    torch.testing.assert_close(enc(images), want, atol=2e-3, rtol=1e-3)  # open_clip rebuilds the graph from shapes


def test_missing_weights_name_the_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="ViT-B-32.pt.*never downloads"):
        load_clip_image_tower(tmp_path / "ViT-B-32.pt")
    with pytest.raises(FileNotFoundError, match="ViT-B-32.pt"):
        build_frozen_encoder(f"clip:{tmp_path}/ViT-B-32.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither open_clip_config.json"):
        load_clip_image_tower(tmp_path / "empty")


def test_encoder_specs_fail_fast():
    assert {"clip", "pretrain"} <= set(FROZEN_ENCODERS.names())
    with pytest.raises(KeyError, match="unknown frozen encoder 'vit'"):
        build_frozen_encoder("vit:/x")
    with pytest.raises(ValueError, match="unknown option.*colour"):
        build_frozen_encoder("clip:/x?colour=1")
    with pytest.raises(ValueError, match="needs a path"):
        build_frozen_encoder("clip:")


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x)).mean((2, 3)))


def test_frozen_encoder_is_frozen_but_passes_pixel_gradients(images):
    enc = FrozenEncoder(_Tiny(), 8, input_size=16, normalize="imagenet", name="tiny")
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    enc.train()                                       # stays in eval mode: BN statistics and dropout frozen
    assert not enc.training and not enc.model.training
    assert all(not p.requires_grad for p in enc.parameters())
    out = enc(images)
    assert out.shape == (3, 8) and not out.requires_grad
    torch.testing.assert_close(enc(images), out)      # deterministic: dropout is off
    x = images.clone().requires_grad_(True)           # attribution: gradient w.r.t. the pixels only
    enc(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert enc.digest == weights_digest(enc.model)


def test_digest_tells_weights_apart():
    a, b = _Tiny(), _Tiny()
    assert weights_digest(a) != weights_digest(b)
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)


def test_frozen_encoder_checks_its_output_size(images):
    enc = FrozenEncoder(_Tiny(), 9, name="wrong")
    with pytest.raises(RuntimeError, match=r"returned \(3, 8\), expected \[B, 9\]"):
        enc(images)


def test_a_trained_run_as_frozen_encoder(tmp_path, images):
    from fer_lab.config import TrainConfig
    from fer_lab.train import Trainer, load_run

    run = tmp_path / "so"
    Trainer(TrainConfig(method="source_only", source=("synth:lab",), target=None, profile="tiny", steps=2,
                        n_train=64, n_test=32, out_dir=str(run), progress=False)).fit()
    enc = build_frozen_encoder(f"run:{run}")
    backbone = load_run(run)[0].extractor.backbone
    assert enc.dim == backbone.out_channels and enc.name == f"run:{run}"
    with torch.no_grad():
        torch.testing.assert_close(enc(images), backbone(images)[1].mean((2, 3)))
    with pytest.raises(FileNotFoundError, match="not a fer-lab run folder"):
        build_frozen_encoder(f"run:{tmp_path / 'nothing'}")


def test_feature_memo_encodes_each_face_once_and_ignores_batch_mates(images):
    from fer_lab.models.frozen import MEMO_CHUNK, FeatureMemo

    enc = FrozenEncoder(_Tiny(), 8, name="memo-test")
    calls = []
    enc.model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    enc.use_memo()
    assert enc.memo is FrozenEncoder(enc.model, 8, name="memo-test").use_memo().memo   # shared: same weights
    assert enc.memo is not FrozenEncoder(_Tiny(), 8, name="memo-test").use_memo().memo  # other weights
    first = enc(images)
    assert calls == [MEMO_CHUNK]                                   # the three misses, padded to one chunk
    again = enc(images.flip(0))
    assert calls == [MEMO_CHUNK] and torch.equal(again, first.flip(0))   # all hits, nothing encoded
    assert enc.memo.hits == 3 and enc.memo.misses == 3
    other = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    mixed = enc(torch.cat([images[:1], other]))
    assert torch.equal(mixed[0], first[0]) and calls == [MEMO_CHUNK, MEMO_CHUNK]
    fresh = FrozenEncoder(enc.model, 8, name="memo-test-2").use_memo()
    torch.testing.assert_close(fresh(other), mixed[1:], atol=0, rtol=0)   # chunked: independent of batch-mates
    bounded = FeatureMemo(max_bytes=8 * 4)                          # room for one feature vector of 8 floats
    bounded.features(enc, images)
    assert len(bounded.table) == 1 and bounded.bytes == 32
    x = images.clone().requires_grad_(True)                         # attributions bypass the memo
    enc(x).sum().backward()
    assert x.grad is not None
