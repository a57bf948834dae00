"""Frozen general-purpose image encoders: CLIP image towers read from local files, and fer-lab's own pre-trained
face encoder.

Generalizable FER (Zhang et al., ECCV 2024) masks the features of a *frozen* general-purpose encoder (OpenAI CLIP
ViT-B/32) rather than fine-tuning one. :class:`FrozenEncoder` wraps any such model behind one contract:

    encoder = build_frozen_encoder("clip:~/.cache/clip/ViT-B-32.pt")   # or "pretrain:smoke", "clip:/models/clip-hf"
    e = encoder(images)            # images [B, 3, H, W] in [0, 1]  ->  features [B, encoder.dim]

* the wrapped model never trains: every parameter has ``requires_grad=False``, the module stays in eval mode
  whatever ``.train()`` is called with (BatchNorm statistics and dropout are frozen too), and the forward runs under
  ``torch.no_grad`` unless the *input* asks for a gradient (attribution methods such as Captum need the gradient
  with respect to the pixels; the weights still get none);
* it resizes the images to the encoder's own input size (CLIP: 224) and normalises them itself;
* :attr:`FrozenEncoder.digest` fingerprints the weights, so a checkpoint trained on one encoder is never silently
  reloaded on another.

Encoder specs (``scheme:arg?key=value``), :data:`FROZEN_ENCODERS`:

``clip:PATH``
    A CLIP image tower from local files; nothing is ever downloaded. ``PATH`` is one of

    * an OpenAI checkpoint (``ViT-B-32.pt`` as ``clip.load("ViT-B/32")`` saves it under ``~/.cache/clip``, TorchScript
      archive or plain state dict): read with open_clip's :func:`open_clip.load_openai_model`, which infers the
      architecture from the weights (QuickGELU, as OpenAI trained it);
    * another open_clip checkpoint file with ``?arch=`` naming its open_clip architecture (e.g. ``ViT-B-32`` for the
      LAION weights);
    * a folder holding ``open_clip_config.json`` and its weights (open_clip's ``local-dir:`` layout);
    * a folder holding a transformers ``config.json`` (``CLIPModel``, ``CLIPVisionModel`` or
      ``CLIPVisionModelWithProjection``) and its weights, read with ``local_files_only=True``.

    Options: ``normalize=imagenet`` (default; the released Generalizable-FER code feeds CLIP ImageNet-normalised
    tensors) or ``normalize=clip`` (CLIP's own statistics); ``size=`` the input size (default: the tower's own);
    ``projection=true|false`` (default true: the 512-d joint embedding, as ``clip.encode_image`` returns).
``run:DIR``
    The backbone of a run trained by fer-lab (``fer-lab train --out-dir DIR``), globally pooled, frozen. Freezing a
    model that *was* trained on expressions is a check of the masking machinery, not domain generalisation.
``backbone:NAME``
    A registered backbone (:data:`fer_lab.models.backbones.BACKBONES`) with its default weights, globally average
    pooled, frozen: the real pre-trained encoders that ship inside registry packages (``backbone:efficientnet_lite0``,
    ImageNet, 1280-d; :mod:`fer_lab.models.pretrained`), or a randomly initialised reference
    (``backbone:smallcnn``). Options: ``size=`` resize the images to this square size first (default: keep them;
    EfficientNet-Lite0 was trained at 224), ``weights=`` a local weights file to load instead, ``seed=`` the
    random initialisation's seed (default 0).
``dlib:face_resnet``
    dlib's face-recognition ResNet (trained on about 3 million real faces to tell identities apart), ported from
    ``dlib_face_recognition_resnet_model_v1.dat`` in the ``face_recognition_models`` package
    (:class:`fer_lab.models.pretrained.DlibFaceResNet`). Images are resized to its 150 px input. Options:
    ``feature=embedding`` (default: dlib's 128-d face descriptor) or ``feature=pooled`` (the 256-d pooled map before
    it).
``pretrain:PROFILE``
    fer-lab's face encoder pre-trained on a task that is not expression (identity, landmarks and pose of SynthFER
    subjects across domains; see :mod:`fer_lab.pretrain`), read from the cache under ``$FER_LAB_CACHE/pretrain``
    and built there on first use. ``PROFILE`` is ``tiny``, ``smoke``, ``full`` or ``auto`` (as the training
    profiles).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fer_lab.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from fer_lab.registry import Registry

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "FROZEN_ENCODERS",
    "FeatureMemo",
    "FrozenEncoder",
    "build_frozen_encoder",
    "load_clip_image_tower",
    "parse_encoder_spec",
    "weights_digest",
]

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
_NORMALIZE = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD), "none": None}

#: Scheme -> factory ``f(arg: str, **options) -> FrozenEncoder``.
FROZEN_ENCODERS: Registry[Callable[..., "FrozenEncoder"]] = Registry("frozen encoder")


def weights_digest(module: nn.Module) -> str:
    """A 16-hex-digit SHA-256 of a module's parameters and buffers (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class FrozenEncoder(nn.Module):
    """A frozen feature extractor: images ``[B, 3, H, W]`` in ``[0, 1]`` -> features ``[B, dim]``.

    Args:
        model: maps prepared images (resized to ``input_size``, normalised with ``normalize``) to ``[B, dim]``.
        dim: feature size.
        input_size: images are resized (bilinear, antialiased) to this square size first; ``None`` keeps them.
        normalize: ``"imagenet"``, ``"clip"`` or ``"none"`` (the model normalises itself, as fer-lab backbones do).
        name: a short description (the spec it was built from), shown in reports.
    """

    def __init__(self, model: nn.Module, dim: int, input_size: int | None = None, normalize: str = "none",
                 name: str = "") -> None:
        super().__init__()
        if normalize not in _NORMALIZE:
            raise ValueError(f"normalize must be one of {', '.join(_NORMALIZE)}, got {normalize!r}")
        self.model = model
        self.dim = int(dim)
        self.input_size = input_size
        self.normalize = normalize
        self.name = name
        stats = _NORMALIZE[normalize] or ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.register_buffer("pixel_mean", torch.tensor(stats[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(stats[1]).view(1, 3, 1, 1), persistent=False)
        self.model.requires_grad_(False)
        self.model.eval()
        self.digest = weights_digest(self.model)

    def train(self, mode: bool = True) -> "FrozenEncoder":
        """Always eval: frozen BatchNorm statistics and no dropout, whatever the parent's mode."""
        return super().train(False)

    def prepare(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"FrozenEncoder expects images [B, 3, H, W], got {tuple(images.shape)}")
        x = images
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        if self.normalize != "none":
            x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
        return x

    def forward(self, images: Tensor) -> Tensor:
        if torch.is_grad_enabled() and images.requires_grad:  # pixel attributions: gradient to the input only
            out = self.model(self.prepare(images))
        elif self.memo is not None:
            return self.memo.features(self, images)
        else:
            with torch.no_grad():
                out = self.model(self.prepare(images))
        return self._checked(out)

    def _checked(self, out: Tensor) -> Tensor:
        if out.dim() != 2 or out.shape[1] != self.dim:
            raise RuntimeError(f"frozen encoder {self.name!r} returned {tuple(out.shape)}, expected [B, {self.dim}]")
        return out.float()

    #: set by :meth:`use_memo`; ``None``: every call runs the model
    memo: "FeatureMemo | None" = None

    def use_memo(self, max_bytes: int = 1 << 30) -> "FrozenEncoder":
        """Remember the features of the images seen, so each distinct face goes through the encoder once.

        The memo is shared by every encoder with the same weights, name and preprocessing in this process (so the
        runs of a notebook or a sweep reuse one another's features) and holds at most ``max_bytes`` of features.
        With it, the features of an image do not depend on its batch-mates: images the memo lacks are encoded in
        zero-padded chunks of :data:`MEMO_CHUNK` (a batch's composition otherwise moves the last digits of some
        kernels' results), so a run gives the same result whichever run filled the memo, resumed or not.
        """
        key = f"{self.digest}|{self.name}|{self.input_size}|{self.normalize}"
        memo = _MEMOS.get(key)
        if memo is None:
            memo = _MEMOS[key] = FeatureMemo(max_bytes)
        self.memo = memo
        return self


    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, input_size={self.input_size}, normalize={self.normalize!r}"


#: Images the memo lacks are encoded in zero-padded chunks of this many (see :meth:`FrozenEncoder.use_memo`).
MEMO_CHUNK = 32


class FeatureMemo:
    """Features of images seen before, keyed by a hash of their exact pixels (a cache: results are those the encoder
    computes, in chunks of :data:`MEMO_CHUNK`). Bounded: once ``max_bytes`` are stored, new features are computed
    but no longer kept."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = int(max_bytes)
        self.table: dict[bytes, Tensor] = {}
        self.bytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def keys(images: Tensor) -> list[bytes]:
        flat = images.detach().to("cpu", torch.float32).contiguous().reshape(len(images), -1).numpy()
        return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]

    def features(self, encoder: "FrozenEncoder", images: Tensor) -> Tensor:
        keys = self.keys(images)
        missing = [i for i, k in enumerate(keys) if k not in self.table]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[int, Tensor] = {}
        with torch.no_grad():
            for start in range(0, len(missing), MEMO_CHUNK):
                rows = missing[start:start + MEMO_CHUNK]
                x = images[rows]
                if len(rows) < MEMO_CHUNK:
                    x = torch.cat([x, x.new_zeros((MEMO_CHUNK - len(rows), *x.shape[1:]))])
                out = encoder._checked(encoder.model(encoder.prepare(x)))[: len(rows)].cpu()
                for i, f in zip(rows, out):
                    f = f.clone()
                    fresh[i] = f
                    if keys[i] not in self.table and self.bytes + f.numel() * 4 <= self.max_bytes:
                        self.table[keys[i]] = f
                        self.bytes += f.numel() * 4
        rows = [fresh[i] if i in fresh else self.table[k] for i, k in enumerate(keys)]
        return torch.stack(rows).to(images.device)


_MEMOS: dict[str, FeatureMemo] = {}


# ---------------------------------------------------------------------------------------------------------------------
# CLIP image towers from local files
# ---------------------------------------------------------------------------------------------------------------------
class _OpenClipVisual(nn.Module):
    """open_clip's ``model.visual`` (includes the projection to the joint space, as ``encode_image``)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: Tensor) -> Tensor:
        out = self.visual(x)
        return out[0] if isinstance(out, tuple) else out


class _HFVision(nn.Module):
    """A transformers CLIP vision model: ``image_embeds`` (with projection) or ``pooler_output``."""

    def __init__(self, model: nn.Module, projection: bool) -> None:
        super().__init__()
        self.hf = model
        self.projection = projection

    def forward(self, x: Tensor) -> Tensor:
        out = self.hf(pixel_values=x)
        return out.image_embeds if self.projection else out.pooler_output


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())


def _missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"CLIP weights not found at {str(path)!r}. fer-lab never downloads weights: put there either an OpenAI "
        f"checkpoint file (e.g. ViT-B-32.pt, which clip.load('ViT-B/32') saves under ~/.cache/clip), an open_clip "
        f"checkpoint file (with ?arch=<open_clip model name>), a folder with open_clip_config.json and its weights, "
        f"or a transformers CLIP folder (config.json + model.safetensors)")


def _probe_dim(model: nn.Module, size: int) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, 3, size, size)).shape[1])


def load_clip_image_tower(path: str | os.PathLike, arch: str = "openai", normalize: str = "imagenet",
                          size: int | None = None, projection: bool = True) -> FrozenEncoder:
    """A frozen CLIP image tower from local files (see the module docstring for the accepted layouts).

    Args:
        path: checkpoint file or folder. ``~`` is expanded.
        arch: for a checkpoint *file*: ``"openai"`` (infer the architecture from OpenAI-format weights) or an
            open_clip model name such as ``"ViT-B-32"``. Ignored for folders (they carry their config).
        normalize: ``"imagenet"`` (the released Generalizable-FER code) or ``"clip"``.
        size: input size; default the tower's own (224 for ViT-B/32).
        projection: return the projected joint embedding (``encode_image``); transformers folders without a
            projection (``CLIPVisionModel``) need ``projection=False``.

    Raises:
        FileNotFoundError: nothing at ``path``, or a folder without a recognised config (the message names it).
    """
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.exists():
        raise _missing(p)
    if p.is_dir():
        if (p / "open_clip_config.json").is_file():
            import open_clip

            clip = open_clip.create_model(f"local-dir:{p}", pretrained_text=False)
            model, native = _OpenClipVisual(clip.visual), _image_size(clip.visual)
        elif (p / "config.json").is_file():
            model, native = _load_hf_vision(p, projection)
        else:
            raise FileNotFoundError(f"{str(p)!r} is a folder but holds neither open_clip_config.json (open_clip) nor "
                                    f"config.json (transformers); see fer_lab.models.frozen for the accepted layouts")
    else:
        import open_clip

        if arch == "openai":
            # OpenAI's own files are TorchScript archives; load_openai_model reads them (and plain OpenAI-format
            # state dicts) and builds the architecture from the weights' shapes, with QuickGELU.
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice: the archive is only read
                warnings.simplefilter("ignore", FutureWarning)
                clip = open_clip.load_openai_model(str(p), precision="fp32", device="cpu")
        else:
            if _is_torchscript(p):
                raise ValueError(f"{str(p)!r} is a TorchScript (OpenAI) archive: load it with arch='openai'")
            clip = open_clip.create_model(arch, pretrained=str(p), pretrained_text=False)
        model, native = _OpenClipVisual(clip.visual), _image_size(clip.visual)
        if not projection:
            raise ValueError("projection=False is only supported for transformers folders")
    model = model.float().eval()
    size = int(size or native)
    dim = _probe_dim(model, size)
    return FrozenEncoder(model, dim, input_size=size, normalize=normalize, name=f"clip:{p}")


def _image_size(visual: nn.Module) -> int:
    s = getattr(visual, "image_size", 224)
    return int(s[0] if isinstance(s, (tuple, list)) else s)


def _load_hf_vision(folder: Path, projection: bool) -> tuple[nn.Module, int]:
    from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    info = json.loads((folder / "config.json").read_text())
    kind = info.get("model_type")
    if kind not in ("clip", "clip_vision_model"):
        raise ValueError(f"{folder / 'config.json'}: model_type {kind!r} is not a CLIP model (clip, clip_vision_model)")
    from transformers.utils import logging as hf_logging

    config = CLIPVisionConfig.from_pretrained(folder, local_files_only=True)
    cls = CLIPVisionModelWithProjection if projection else CLIPVisionModel
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a full CLIPModel folder lists every text-tower key as unused: expected here
    try:
        model = cls.from_pretrained(folder, config=config, local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    return _HFVision(model, projection), int(config.image_size)


@FROZEN_ENCODERS.register("clip")
def _clip(arg: str, arch: str = "openai", normalize: str = "imagenet", size: int | None = None,
          projection: bool = True) -> FrozenEncoder:
    """CLIP image tower from a local file or folder."""
    if not arg:
        raise ValueError("encoder spec 'clip:' needs a path, e.g. 'clip:~/.cache/clip/ViT-B-32.pt'")
    return load_clip_image_tower(arg, arch=arch, normalize=normalize, size=size, projection=projection)


@FROZEN_ENCODERS.register("backbone")
def _backbone(arg: str, size: int | None = None, weights: str | None = None, seed: int = 0) -> FrozenEncoder:
    """A registered backbone with its default weights (real ones where a package ships them), pooled, frozen."""
    from fer_lab.models.backbones import build_backbone
    from fer_lab.pretrain import FaceEmbedder

    if not arg:
        raise ValueError("encoder spec 'backbone:' needs a backbone name, e.g. 'backbone:efficientnet_lite0'")
    with torch.random.fork_rng(devices=[]):      # a random-init reference is a function of its seed alone
        torch.manual_seed(int(seed))
        net = build_backbone(arg, weights=os.path.expanduser(weights) if weights else None)
    embedder = FaceEmbedder(net)
    query = "&".join(f"{k}={v}" for k, v in (("size", size), ("weights", weights)) if v is not None)
    return FrozenEncoder(embedder, embedder.dim, input_size=int(size) if size else None, normalize="none",
                         name=f"backbone:{arg}" + (f"?{query}" if query else ""))


@FROZEN_ENCODERS.register("dlib")
def _dlib(arg: str, feature: str = "embedding") -> FrozenEncoder:
    """dlib's face-recognition ResNet from the face_recognition_models package (ported, frozen)."""
    from fer_lab.models.pretrained import DlibEmbedding, DlibFaceResNet
    from fer_lab.pretrain import FaceEmbedder

    if arg not in ("face_resnet", ""):
        raise ValueError(f"encoder spec 'dlib:{arg}': the dlib network fer-lab ports is 'dlib:face_resnet'")
    if feature not in ("embedding", "pooled"):
        raise ValueError(f"encoder spec 'dlib:{arg}': feature must be 'embedding' (128-d) or 'pooled' (256-d), "
                         f"got {feature!r}")
    net = DlibFaceResNet()
    model: nn.Module = DlibEmbedding(net) if feature == "embedding" else FaceEmbedder(net)
    dim = net.embedding_dim if feature == "embedding" else net.out_channels
    return FrozenEncoder(model, dim, normalize="none",
                         name="dlib:face_resnet" + ("" if feature == "embedding" else "?feature=pooled"))


@FROZEN_ENCODERS.register("pretrain")
def _pretrain(arg: str, progress: bool = True) -> FrozenEncoder:
    """fer-lab's pre-trained SynthFER face encoder (identity, landmarks, pose), cached; built on first use."""
    from fer_lab.pretrain import load_encoder

    return load_encoder(arg or "auto", progress=progress)


@FROZEN_ENCODERS.register("run")
def _run(arg: str) -> FrozenEncoder:
    """The backbone of a trained fer-lab run (``fer-lab train --out-dir DIR``), globally pooled, frozen."""
    from fer_lab.pretrain import FaceEmbedder
    from fer_lab.train import load_run

    folder = Path(os.path.expanduser(arg))
    if not (folder / "config.json").is_file() or not (folder / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"encoder spec 'run:{arg}': {str(folder)!r} is not a fer-lab run folder "
                                f"(config.json and checkpoint.pt expected)")
    method, _ = load_run(folder)
    backbone = getattr(getattr(method, "extractor", None), "backbone", None)
    if backbone is None:
        raise ValueError(f"encoder spec 'run:{arg}': the run's method ({type(method).__name__}) has no backbone")
    embedder = FaceEmbedder(backbone)
    return FrozenEncoder(embedder, embedder.dim, name=f"run:{folder}")


def parse_encoder_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``scheme:arg?key=value`` -> ``(scheme, arg, options)`` (values parsed as int, float or bool)."""
    from fer_lab.data.spec import SpecError, parse_spec

    try:
        s = parse_spec(spec)
    except SpecError as e:
        raise ValueError(f"frozen encoder spec: {e} (e.g. 'pretrain:smoke', 'clip:/models/ViT-B-32.pt')") from None
    return s.name, s.arg, dict(s.params)


def build_frozen_encoder(spec: str, **defaults: Any) -> FrozenEncoder:
    """Build a frozen encoder from its spec (see the module docstring); ``defaults`` fill options the spec omits
    when the scheme accepts them (e.g. ``progress=False``)."""
    import inspect

    scheme, arg, options = parse_encoder_spec(spec)
    factory = FROZEN_ENCODERS.get(scheme)
    accepted = inspect.signature(factory).parameters
    unknown = [k for k in options if k not in accepted or k == "arg"]
    if unknown:
        raise ValueError(f"frozen encoder spec {spec!r}: unknown option(s) {', '.join(unknown)}; "
                         f"{scheme} accepts {', '.join(k for k in accepted if k != 'arg')}")
    options = {**{k: v for k, v in defaults.items() if k in accepted}, **options}
    return factory(arg, **options)

