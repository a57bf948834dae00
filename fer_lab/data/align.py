"""Face alignment: five landmarks -> a similarity-aligned ``size x size`` face, with MTCNN where none are given.

Every dataset face ends up the same way: a square uint8 RGB crop in which the five landmarks of
:data:`fer_lab.labels.LANDMARKS` (left eye, right eye, nose tip, left and right mouth corner) sit near the
ArcFace / face.evoLVe template :data:`REFERENCE_5`. Where the geometry comes from depends on the dataset
(:class:`FaceAligner` ``mode``):

``"landmarks"``  the dataset ships the five points (or 68, reduced by :func:`five_from_68`): the similarity
                 transform (rotation, uniform scale, shift; never a reflection) that best maps them onto the
                 template (:func:`similarity_transform`, Umeyama's least squares) warps the image.
``"mtcnn"``      MTCNN (P-, R- and O-net weights from the facenet-pytorch wheel; nothing is downloaded) finds
                 the face and its five points, then as ``"landmarks"``.
``"bbox"``       the dataset gives a face box: the box, enlarged by 10 % of its width/height on each side and
                 clamped to the image (as the CD-FER benchmark crops), is resized to ``size x size``; the
                 landmarks are the template's (an approximation: no points are known).
``"whole"``      the image already is a tight face crop (FER2013's 48 x 48): it is resized as a whole; template
                 landmarks.
``"auto"``       the given landmarks if any, else MTCNN. When MTCNN finds no face the result is ``None`` and the
                 caller lists that image; nothing is dropped silently.

Coordinates are continuous pixel coordinates: ``(x, y)`` with ``(0, 0)`` the top-left corner of the image, so
pixel ``(row i, column j)`` has its centre at ``(j + 0.5, i + 0.5)`` (the convention of
:mod:`fer_lab.data.synth`, of PIL's geometric transforms and of ``grid_sample(align_corners=False)``).

Detection on face crops
    MTCNN was trained on faces with some context around them. FER images are mostly crops in which the face
    fills, or overflows, the frame; on those MTCNN often still fires with a probability near 1 but puts the
    points far off (on a 48 x 48 tight crop of ``skimage.data.astronaut()`` the worst point is off by 0.25 to
    1.2 interocular distances). So before detection the image (or the given box) is padded by ``detect_pad``
    (default 0.5) of its width/height on each side, by replicating its edge pixels; on the same crops the worst
    point is then within about 0.1 interocular distance. Upscaling small images instead of padding them did
    not help (MTCNN's 12-pixel P-net window already sees a 48-pixel face at several pyramid scales), so small
    images are not upscaled: a 48 x 48 FER2013 face becomes a 96 x 96 detection canvas and is found with the
    default ``min_face_size=20``. ``"auto"`` treats every image this way, small or not.

    MTCNN's time goes almost all into its image pyramid (P-net over every scale), i.e. grows with the canvas
    area, so canvases whose longer side exceeds ``max_detect_side`` (640) are downscaled first: for a 512 x 512
    photograph (canvas 1024 x 1024) the smallest face searched is then 32 source pixels, a size FER has no use
    for. Images with small faces in a large scene should come with boxes: with a ``box``, only the box region
    (padded the same way) is searched.

Speed (CPU): see ``benchmarks/bench_align.py``, which prints faces/s for one-by-one and batched alignment,
one thread and the default thread count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from fer_lab.labels import NUM_LANDMARKS
from fer_lab.registry import Registry

__all__ = [
    "ALIGN_MODES", "DETECTORS", "REFERENCE_5", "REFERENCE_SIZE", "AlignedFace", "Detections", "FaceAligner",
    "FaceDetector", "MTCNNDetector", "apply_transform", "five_from_68", "invert_transform", "reference_landmarks",
    "similarity_transform", "warp_affine", "warp_affine_batch",
]

#: The modes :meth:`FaceAligner.align` accepts.
ALIGN_MODES: tuple[str, ...] = ("auto", "landmarks", "mtcnn", "bbox", "whole")

#: Side of the square face :data:`REFERENCE_5` is drawn for.
REFERENCE_SIZE = 112

#: ArcFace / face.evoLVe five-point template of a 112 x 112 face, rows in :data:`fer_lab.labels.LANDMARKS` order
#: (left eye, right eye, nose tip, left mouth corner, right mouth corner; "left" = smaller x). The published
#: numbers are used as continuous coordinates (half a pixel from OpenCV's pixel-index reading, far below the
#: landmark noise).
REFERENCE_5: np.ndarray = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
REFERENCE_5.setflags(write=False)

#: iBUG 68-point indices (0-based) behind each of the five points; the eyes are the mean of their 6 contour points.
_EYE_68 = (tuple(range(36, 42)), tuple(range(42, 48)))
_NOSE_TIP_68, _MOUTH_LEFT_68, _MOUTH_RIGHT_68 = 30, 48, 54

_INSTALL_HINT = (
    "pip install --no-deps -r requirements/no-deps.txt   (facenet-pytorch==2.6.0; --no-deps because its "
    "metadata pins an old torch; `bash scripts/setup.sh` does this)"
)


# --- geometry --------------------------------------------------------------------------------------------------

def reference_landmarks(size: int) -> np.ndarray:
    """The :data:`REFERENCE_5` template scaled to a ``size x size`` face: ``[5, 2]`` float32."""
    if int(size) != size or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return (REFERENCE_5.astype(np.float64) * (size / REFERENCE_SIZE)).astype(np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991) mapping ``src`` points onto ``dst`` points.

    Returns the ``[2, 3]`` float64 matrix ``M = [s R | t]`` minimising ``sum ||s R src_i + t - dst_i||^2`` over
    rotations ``R`` (``det R = +1``: a mirrored point set is answered with the best rotation, never a
    reflection), scales ``s > 0`` and shifts ``t``. Exact when ``dst`` is a similarity image of ``src``.

    Args:
        src: ``[N, 2]`` points, ``N >= 2``, not all equal.
        dst: ``[N, 2]`` points.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"similarity_transform needs two [N, 2] point sets with N >= 2, got {src.shape} and "
                         f"{dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("similarity_transform: points must be finite")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs ** 2).sum() / len(src)
    if var_s <= 1e-12 * max(1.0, float(np.abs(src).max()) ** 2):
        raise ValueError("similarity_transform: the source points all coincide; no transform is defined")
    cov = xd.T @ xs / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rot = u @ np.diag(d) @ vt
    scale = float((sig * d).sum() / var_s)
    if scale <= 0:  # only for degenerate targets (all dst points equal)
        raise ValueError("similarity_transform: the target points all coincide; no transform is defined")
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``[..., 2]`` points through a ``[2, 3]`` affine ``matrix``; returns float32."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return (p @ m[:, :2].T + m[:, 2]).astype(np.float32)


def invert_transform(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a ``[2, 3]`` affine matrix (as ``[2, 3]`` float64)."""
    m = np.asarray(matrix, dtype=np.float64)
    a_inv = np.linalg.inv(m[:, :2])
    return np.concatenate([a_inv, -a_inv @ m[:, 2:]], axis=1)


def five_from_68(points68: np.ndarray) -> np.ndarray:
    """Reduce iBUG 68-point landmarks (``[..., 68, 2]``, 0-based indexing) to the five of
    :data:`fer_lab.labels.LANDMARKS`: eye centres = mean of each eye's 6 contour points (36-41 is the eye with
    the smaller x on a frontal face, the subject's right eye), nose tip = point 30, mouth corners = 48 and 54.
    Returns ``[..., 5, 2]`` float32."""
    p = np.asarray(points68, dtype=np.float64)
    if p.ndim < 2 or p.shape[-2:] != (68, 2):
        raise ValueError(f"five_from_68 expects [..., 68, 2] points, got shape {p.shape}")
    out = np.stack([p[..., list(_EYE_68[0]), :].mean(-2), p[..., list(_EYE_68[1]), :].mean(-2),
                    p[..., _NOSE_TIP_68, :], p[..., _MOUTH_LEFT_68, :], p[..., _MOUTH_RIGHT_68, :]], axis=-2)
    return out.astype(np.float32)


# --- warping ---------------------------------------------------------------------------------------------------

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC}


def _resample(name: str) -> Image.Resampling:
    try:
        return _RESAMPLE[name]
    except KeyError:
        raise ValueError(f"unknown resample {name!r}; known: {', '.join(_RESAMPLE)}") from None


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int, resample: str = "bilinear",
                fill: int = 0) -> np.ndarray:
    """Warp ``image`` (``[H, W, 3]`` uint8) by the affine ``matrix`` (source -> output, continuous pixel
    coordinates) into a ``size x size`` uint8 image, with PIL (deterministic, one C pass).

    Where the transform shrinks the image by 2x or more, the source is first box-filtered by the integer factor
    PIL's ``Image.reduce`` allows (and ``matrix`` adjusted), so that large faces are not aliased: an affine warp
    samples but does not average. Pixels that come from outside the image are ``fill``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    img = Image.fromarray(np.ascontiguousarray(image))
    s_max = float(np.linalg.svd(m[:, :2], compute_uv=False).max())  # the least-shrinking direction
    k = int(1.0 / s_max) if s_max > 0 else 1
    k = max(1, min(k, img.width, img.height))
    if k >= 2:
        img = img.reduce(k)            # pixel block [k j, k j + k) -> pixel j: continuous x' = x / k
        m = m.copy()
        m[:, :2] *= k
    inv = invert_transform(m)
    out = img.transform((size, size), Image.Transform.AFFINE, data=tuple(inv.ravel()), resample=_resample(resample),
                        fillcolor=(fill,) * 3)
    return np.asarray(out)


def warp_affine_batch(images: np.ndarray | torch.Tensor, matrices: np.ndarray | torch.Tensor, size: int,
                      mode: str = "bilinear") -> torch.Tensor:
    """Batched warp with ``affine_grid`` / ``grid_sample`` (zeros outside; no anti-aliasing).

    Args:
        images:   ``[B, H, W, 3]`` uint8 (numpy or torch, any device), all the same size.
        matrices: ``[B, 2, 3]`` source -> output affine matrices in continuous pixel coordinates.
        size:     output side.
    Returns ``[B, size, size, 3]`` uint8 on the images' device. Agrees with :func:`warp_affine` where the
    latter does not pre-reduce (scale above 1/2), up to rounding.
    """
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"warp_affine_batch expects [B, H, W, 3] images, got {tuple(x.shape)}")
    h, w = x.shape[1:3]
    m = torch.as_tensor(np.asarray(matrices, dtype=np.float64) if not torch.is_tensor(matrices) else matrices,
                        dtype=torch.float64)
    if m.shape != (x.shape[0], 2, 3):
        raise ValueError(f"warp_affine_batch expects [{x.shape[0]}, 2, 3] matrices, got {tuple(m.shape)}")
    full = torch.cat([m, m.new_tensor([0.0, 0.0, 1.0]).expand(len(m), 1, 3)], dim=1)
    inv = torch.linalg.inv(full)                                          # output -> source
    n_in = m.new_tensor([[2.0 / w, 0.0, -1.0], [0.0, 2.0 / h, -1.0], [0.0, 0.0, 1.0]])
    n_out_inv = m.new_tensor([[size / 2.0, 0.0, size / 2.0], [0.0, size / 2.0, size / 2.0], [0.0, 0.0, 1.0]])
    theta = (n_in @ inv @ n_out_inv)[:, :2].to(torch.float32).to(x.device)
    grid = torch.nn.functional.affine_grid(theta, [len(x), 3, size, size], align_corners=False)
    src = x.permute(0, 3, 1, 2).to(torch.float32)
    out = torch.nn.functional.grid_sample(src, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# --- detection -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Detections:
    """Faces found in one image, best first (descending score).

    boxes:     ``[N, 4]`` float32 ``x1, y1, x2, y2``
    scores:    ``[N]`` float32 detector probabilities
    landmarks: ``[N, 5, 2]`` float32, rows in :data:`fer_lab.labels.LANDMARKS` order
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))

    def mapped(self, scale: tuple[float, float], offset: tuple[float, float]) -> Detections:
        """Coordinates ``p / scale + offset`` per axis (from a resized, shifted canvas back to its source)."""
        sc, off = np.asarray(scale, np.float64), np.asarray(offset, np.float64)
        return Detections((self.boxes / np.tile(sc, 2) + np.tile(off, 2)).astype(np.float32), self.scores,
                          (self.landmarks / sc + off).astype(np.float32))


class FaceDetector(Protocol):
    """A batched face detector: images ``[B, H, W, 3]`` (uint8 or float 0..255 RGB) -> one
    :class:`Detections` per image, in that image's continuous pixel coordinates."""

    def detect(self, images: torch.Tensor) -> list[Detections]: ...


#: Face detectors by name; each entry is a factory ``(device=..., min_face_size=...) -> FaceDetector``.
DETECTORS: Registry[Callable[..., FaceDetector]] = Registry("face detector")


def _facenet_mtcnn() -> tuple[Any, Any, Any, Any, Path]:
    """Import facenet-pytorch's MTCNN pieces, or fail with the install command."""
    try:
        import facenet_pytorch
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
        from facenet_pytorch.models.utils.detect_face import detect_face
    except ImportError as e:
        raise ImportError(f"MTCNN face detection needs the facenet-pytorch package ({e}). Install it with: "
                          f"{_INSTALL_HINT}") from e
    return PNet, RNet, ONet, detect_face, Path(facenet_pytorch.__file__).parent / "data"


@DETECTORS.register("mtcnn")
class MTCNNDetector:
    """MTCNN (Zhang et al. 2016) with the P-, R- and O-net weights that ship inside the facenet-pytorch wheel.

    The networks are facenet-pytorch's; their state dicts are loaded here with ``weights_only=True`` and
    ``map_location`` (the package's own loader uses neither), and its ``detect_face`` pipeline is called on
    tensors, which works with current torch, numpy and PIL. The O-net landmark order (left eye, right eye, nose,
    left mouth corner, right mouth corner, "left" = smaller x) is already :data:`fer_lab.labels.LANDMARKS`.

    Coordinates: mirroring a face and detecting again gives ``x + x_mirrored - W`` of +0.8 px on average over
    six image scales, i.e. MTCNN's points read as continuous coordinates to within half a pixel (a pixel-index
    reading would give -1), so they are used as they come.

    Args:
        device:        where the networks run.
        min_face_size: smallest face searched for, in detection-canvas pixels (MTCNN's 20 by default).
        thresholds:    P-, R-, O-net probability thresholds (MTCNN's defaults).
        factor:        image-pyramid scale step.
    """

    def __init__(self, device: str | torch.device = "cpu", min_face_size: int = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), factor: float = 0.709) -> None:
        pnet_cls, rnet_cls, onet_cls, self._detect_face, data = _facenet_mtcnn()
        self.device = torch.device(device)
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        if self.min_face_size < 12:
            raise ValueError(f"min_face_size must be >= 12 (the P-net window), got {min_face_size}")
        nets = []
        for cls, name in ((pnet_cls, "pnet"), (rnet_cls, "rnet"), (onet_cls, "onet")):
            path = data / f"{name}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: MTCNN weights missing from the facenet-pytorch install; "
                                        f"reinstall it: {_INSTALL_HINT}")
            net = cls(pretrained=False)
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            nets.append(net.eval().requires_grad_(False).to(self.device))
        self.pnet, self.rnet, self.onet = nets

    def detect(self, images: torch.Tensor | np.ndarray) -> list[Detections]:
        """Detect faces in a batch of same-size images ``[B, H, W, 3]`` (uint8 or float, 0..255, RGB)."""
        x = torch.as_tensor(images)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"MTCNN expects [B, H, W, 3] RGB images, got {tuple(x.shape)}")
        if min(x.shape[1:3]) < self.min_face_size:  # no pyramid level: no face of min_face_size fits
            return [Detections.empty() for _ in range(len(x))]
        x = x.to(self.device, torch.float32)
        with torch.inference_mode():
            try:
                boxes, points = self._detect_face(x, self.min_face_size, self.pnet, self.rnet, self.onet,
                                                  list(self.thresholds), self.factor, self.device)
            except (RuntimeError, ValueError) as e:
                # detect_face concatenates the R/O-net crops of the surviving candidates; when every candidate
                # box lies outside the image that list is empty, which means no face.
                if "non-empty" not in str(e):
                    raise
                return [Detections.empty() for _ in range(len(x))]
        out = []
        for b, p in zip(boxes, points):
            b = np.asarray(b, dtype=np.float32).reshape(-1, 5)
            p = np.asarray(p, dtype=np.float32).reshape(-1, NUM_LANDMARKS, 2)
            order = np.argsort(-b[:, 4], kind="stable")
            out.append(Detections(b[order, :4], b[order, 4], p[order]))
        return out


# --- alignment -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AlignedFace:
    """One aligned face.

    image:     ``[size, size, 3]`` uint8 RGB
    landmarks: ``[5, 2]`` float32 in the aligned image's pixels (the given / detected points carried through the
               warp; the template's for ``"bbox"`` and ``"whole"``)
    method:    ``"landmarks"`` (given 5 points), ``"mtcnn"`` (detected), ``"bbox"`` (box only, template points),
               ``"whole"`` (image resized, template points)
    score:     detector probability; 1.0 when the geometry was given (landmarks, box or whole image)
    box:       ``x1, y1, x2, y2`` of the face in the source image: the detected box (``"mtcnn"``; it may reach
               past the image border), the given box (``"landmarks"`` if one was given, ``"bbox"``), the whole
               image (``"whole"``), else ``None``
    matrix:    ``[2, 3]`` affine map from source to aligned pixels (apply it with :func:`apply_transform` to
               carry other points, e.g. all 68 landmarks, into the aligned face)
    """

    image: np.ndarray
    landmarks: np.ndarray
    method: str
    score: float
    box: tuple[float, float, float, float] | None
    matrix: np.ndarray | None = field(default=None, compare=False, repr=False)


def _check_image(image: np.ndarray, where: str = "image") -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        hint = " (give grey images as 3 channels, e.g. np.repeat(img[..., None], 3, axis=2))" \
            if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 1) else ""
        raise ValueError(f"{where} must be [H, W, 3] uint8 RGB, got {a.dtype} {a.shape}{hint}")
    if min(a.shape[:2]) < 1:
        raise ValueError(f"{where} is empty: {a.shape}")
    return a


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    p = np.asarray(landmarks, dtype=np.float64)
    if p.shape == (68, 2):
        raise ValueError("landmarks must be the 5 points of fer_lab.labels.LANDMARKS, got 68; reduce them with "
                         "fer_lab.data.align.five_from_68")
    if p.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must be [5, 2] (x, y), got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("landmarks must be finite")
    return p


def _check_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    b = tuple(float(v) for v in box)
    if len(b) != 4 or not all(math.isfinite(v) for v in b) or b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"box must be finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {tuple(box)}")
    return b


@dataclass(frozen=True)
class _Canvas:
    """What MTCNN sees of one image: the (box or whole-image) region padded by edge replication, maybe resized."""

    pixels: np.ndarray          # [h, w, 3] uint8
    scale: tuple[float, float]  # canvas px per source px, along x and y
    offset: tuple[float, float]  # source position of the canvas' (0, 0)


class FaceAligner:
    """Aligns faces to a ``size x size`` crop with the five landmarks on the :data:`REFERENCE_5` template.

    Args:
        size:            side of the aligned face.
        detector:        name in :data:`DETECTORS` (``"mtcnn"``) or ``None`` for no detection (``"mtcnn"``
                         mode then raises). The detector is built on first use, so the other modes work without
                         facenet-pytorch installed.
        device:          where the detector runs.
        min_score:       detections below this probability are not faces.
        min_face_size:   smallest face searched for, in detection-canvas pixels.
        detect_pad:      fraction of the image (or given box) width/height added on each side, by edge
                         replication, before detection (see the module docstring: MTCNN misplaces points on
                         faces that fill the frame).
        max_detect_side: detection canvases with a longer side are downscaled to it (bounds the time per image).
        bbox_margin:     ``"bbox"`` mode enlarges the box by this fraction of its width/height on each side.
        batch_size:      images per detector call in :meth:`align_batch`.
        resample:        ``"bilinear"`` or ``"bicubic"`` interpolation of the warp.

    Choosing a face: among the detections with ``score >= min_score``, the largest box, or, when a ``box`` is
    given with ``mode="mtcnn"``/``"auto"``, the detection whose centre is nearest the box centre among those
    whose centre lies inside the box (detection then runs on the box region, padded by ``detect_pad``).

    >>> aligner = FaceAligner(size=112)
    >>> face = aligner.align(image)                 # doctest: +SKIP
    >>> face.image.shape, face.method               # doctest: +SKIP
    ((112, 112, 3), 'mtcnn')
    """

    def __init__(self, size: int = 112, detector: str | None = "mtcnn", device: str = "cpu",
                 min_score: float = 0.9, *, min_face_size: int = 20, detect_pad: float = 0.5,
                 max_detect_side: int = 640, bbox_margin: float = 0.1, batch_size: int = 32,
                 resample: str = "bilinear") -> None:
        if int(size) != size or size < 8:
            raise ValueError(f"size must be an integer >= 8, got {size!r}")
        if detector is not None:
            DETECTORS.get(detector)  # fail fast on an unknown name
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        if detect_pad < 0 or bbox_margin < 0:
            raise ValueError("detect_pad and bbox_margin must be >= 0")
        if max_detect_side < 24 or batch_size < 1:
            raise ValueError("max_detect_side must be >= 24 and batch_size >= 1")
        _resample(resample)
        self.size = int(size)
        self.detector_name = detector
        self.device = device
        self.min_score = float(min_score)
        self.min_face_size = int(min_face_size)
        self.detect_pad = float(detect_pad)
        self.max_detect_side = int(max_detect_side)
        self.bbox_margin = float(bbox_margin)
        self.batch_size = int(batch_size)
        self.resample = resample
        self.template = reference_landmarks(self.size)
        self._detector: FaceDetector | None = None

    def __repr__(self) -> str:
        return (f"FaceAligner(size={self.size}, detector={self.detector_name!r}, device={self.device!r}, "
                f"min_score={self.min_score}, detect_pad={self.detect_pad})")

    @property
    def detector(self) -> FaceDetector:
        """The face detector, built on first use."""
        if self._detector is None:
            if self.detector_name is None:
                raise RuntimeError("this FaceAligner has no detector (detector=None); give landmarks or a box, "
                                   "or use mode 'bbox' / 'whole'")
            self._detector = DETECTORS.get(self.detector_name)(device=self.device, min_face_size=self.min_face_size)
        return self._detector

    # -- public API ---------------------------------------------------------------------------------------------

    def align(self, image: np.ndarray, landmarks: np.ndarray | None = None,
              box: tuple[float, float, float, float] | None = None, mode: str = "auto") -> AlignedFace | None:
        """Align one face (see the module docstring for the modes). ``image``: ``[H, W, 3]`` uint8 RGB;
        ``landmarks``: ``[5, 2]`` (x, y); ``box``: ``(x1, y1, x2, y2)``. Returns ``None`` only when detection
        (``"mtcnn"``, or ``"auto"`` without landmarks) finds no face."""
        return self.align_batch([image], [landmarks], [box], mode=mode)[0]

    def align_batch(self, images: Sequence[np.ndarray], landmarks: Sequence[np.ndarray | None] | None = None,
                    boxes: Sequence[tuple[float, float, float, float] | None] | None = None, mode: str = "auto",
                    progress: bool = False) -> list[AlignedFace | None]:
        """Align many faces; the images that need detection are detected in batches of same-size canvases.

        ``landmarks`` and ``boxes``, when given, are sequences as long as ``images`` (entries may be ``None``).
        ``mode`` applies to every image. Returns one :class:`AlignedFace` or ``None`` (no face found) per image,
        in order.
        """
        n = len(images)
        lms = list(landmarks) if landmarks is not None else [None] * n
        bxs = list(boxes) if boxes is not None else [None] * n
        if len(lms) != n or len(bxs) != n:
            raise ValueError(f"align_batch: {n} images but {len(lms)} landmark entries and {len(bxs)} boxes")
        if mode not in ALIGN_MODES:
            raise ValueError(f"unknown align mode {mode!r}; known: {', '.join(ALIGN_MODES)}")
        imgs = [_check_image(im, f"image {i}") for i, im in enumerate(images)]
        bxs = [None if b is None else _check_box(b) for b in bxs]
        out: list[AlignedFace | None] = [None] * n
        to_detect: list[int] = []
        for i in range(n):
            m = mode
            if m == "auto":
                m = "landmarks" if lms[i] is not None else "mtcnn"
            if m == "landmarks":
                if lms[i] is None:
                    raise ValueError(f"image {i}: mode 'landmarks' needs landmarks")
                try:
                    out[i] = self._from_landmarks(imgs[i], _check_landmarks(lms[i]), "landmarks", 1.0, bxs[i])
                except ValueError as e:
                    raise ValueError(f"image {i}: {e}") from None
            elif m == "bbox":
                if bxs[i] is None:
                    raise ValueError(f"image {i}: mode 'bbox' needs a box")
                out[i] = self._from_box(imgs[i], bxs[i])
            elif m == "whole":
                out[i] = self._from_whole(imgs[i])
            else:
                to_detect.append(i)
        if to_detect:
            found = self._detect_select([imgs[i] for i in to_detect], [bxs[i] for i in to_detect], progress)
            for i, det in zip(to_detect, found):
                if det is not None:
                    box, score, pts = det
                    out[i] = self._from_landmarks(imgs[i], pts.astype(np.float64), "mtcnn", score, box)
        return out

    def detect(self, images: Sequence[np.ndarray], boxes: Sequence[tuple[float, float, float, float] | None]
               | None = None, progress: bool = False) -> list[Detections]:
        """All detections (every score the detector keeps, best first) per image, in source pixels. With a
        ``box``, only that region (padded by ``detect_pad``) is searched."""
        imgs = [_check_image(im, f"image {i}") for i, im in enumerate(images)]
        bxs = list(boxes) if boxes is not None else [None] * len(imgs)
        if len(bxs) != len(imgs):
            raise ValueError(f"detect: {len(imgs)} images but {len(bxs)} boxes")
        bxs = [None if b is None else _check_box(b) for b in bxs]
        canvases = [self._canvas(im, b) for im, b in zip(imgs, bxs)]
        out: list[Detections | None] = [None] * len(imgs)
        for idx in self._batches(canvases, progress):
            dets = self.detector.detect(torch.from_numpy(np.stack([canvases[i].pixels for i in idx])))
            for i, d in zip(idx, dets):
                out[i] = d.mapped(canvases[i].scale, canvases[i].offset)
        return out  # type: ignore[return-value]

    # -- internals ----------------------------------------------------------------------------------------------

    def _batches(self, canvases: list[_Canvas], progress: bool) -> Iterator[list[int]]:
        """Indices grouped by canvas shape, in chunks of ``batch_size`` (deterministic order)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, c in enumerate(canvases):
            groups.setdefault(c.pixels.shape, []).append(i)
        chunks = [idx[s:s + self.batch_size] for idx in groups.values() for s in range(0, len(idx), self.batch_size)]
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(canvases), desc="detect faces", unit="img")
            for c in chunks:
                yield c
                bar.update(len(c))
            bar.close()
        else:
            yield from chunks

    def _canvas(self, image: np.ndarray, box: tuple[float, float, float, float] | None) -> _Canvas:
        h, w = image.shape[:2]
        x1, y1, x2, y2 = box if box is not None else (0.0, 0.0, float(w), float(h))
        px, py = self.detect_pad * (x2 - x1), self.detect_pad * (y2 - y1)
        rx1, ry1 = math.floor(x1 - px), math.floor(y1 - py)
        rx2, ry2 = math.ceil(x2 + px), math.ceil(y2 + py)
        # keep at least one source pixel inside the region, so that edge replication is defined
        rx1, ry1 = min(rx1, w - 1), min(ry1, h - 1)
        rx2, ry2 = max(rx2, rx1 + 1, 1), max(ry2, ry1 + 1, 1)
        pads = ((max(0, -ry1), max(0, ry2 - h)), (max(0, -rx1), max(0, rx2 - w)), (0, 0))
        inside = image[max(0, ry1):min(h, ry2), max(0, rx1):min(w, rx2)]
        pixels = np.pad(inside, pads, mode="edge") if any(p != (0, 0) for p in pads) else inside
        scale = (1.0, 1.0)
        side = max(pixels.shape[:2])
        if side > self.max_detect_side:
            f = self.max_detect_side / side
            ch, cw = (max(12, round(v * f)) for v in pixels.shape[:2])
            pixels = np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize(
                (cw, ch), Image.Resampling.BILINEAR))
            scale = (cw / (rx2 - rx1), ch / (ry2 - ry1))
        return _Canvas(np.ascontiguousarray(pixels), scale, (float(rx1), float(ry1)))

    def _detect_select(self, images: list[np.ndarray], boxes: list[tuple[float, float, float, float] | None],
                       progress: bool) -> list[tuple[tuple[float, float, float, float], float, np.ndarray] | None]:
        out = []
        for det, box in zip(self.detect(images, boxes, progress), boxes):
            keep = det.scores >= self.min_score
            b, s, p = det.boxes[keep], det.scores[keep], det.landmarks[keep]
            if len(s) == 0:
                out.append(None)
                continue
            if box is None:
                k = int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))
            else:
                cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
                inside = (cx >= box[0]) & (cx <= box[2]) & (cy >= box[1]) & (cy <= box[3])
                if not inside.any():
                    out.append(None)
                    continue
                dist = np.hypot(cx - (box[0] + box[2]) / 2, cy - (box[1] + box[3]) / 2)
                k = int(np.argmin(np.where(inside, dist, np.inf)))
            out.append((tuple(float(v) for v in b[k]), float(s[k]), p[k]))
        return out

    def _from_landmarks(self, image: np.ndarray, points: np.ndarray, method: str, score: float,
                        box: tuple[float, float, float, float] | None) -> AlignedFace:
        m = similarity_transform(points, self.template)
        warped = warp_affine(image, m, self.size, self.resample)
        return AlignedFace(warped, apply_transform(m, points), method, float(score), box, m)

    def _resize_region(self, image: np.ndarray, region: tuple[float, float, float, float]) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
        """Resize ``region`` (continuous x1, y1, x2, y2) of the image to size x size (PIL, anti-aliased)."""
        x1, y1, x2, y2 = region
        out = Image.fromarray(np.ascontiguousarray(image)).resize(
            (self.size, self.size), _resample(self.resample), box=(x1, y1, x2, y2))
        sx, sy = self.size / (x2 - x1), self.size / (y2 - y1)
        return np.asarray(out), np.array([[sx, 0.0, -sx * x1], [0.0, sy, -sy * y1]])

    def _from_box(self, image: np.ndarray, box: tuple[float, float, float, float]) -> AlignedFace:
        h, w = image.shape[:2]
        x1, y1, x2, y2 = box
        mx, my = self.bbox_margin * (x2 - x1), self.bbox_margin * (y2 - y1)
        region = (max(0.0, x1 - mx), max(0.0, y1 - my), min(float(w), x2 + mx), min(float(h), y2 + my))
        if region[2] <= region[0] or region[3] <= region[1]:
            raise ValueError(f"box {box} lies outside the {w}x{h} image")
        pixels, m = self._resize_region(image, region)
        return AlignedFace(pixels, self.template.copy(), "bbox", 1.0, box, m)

    def _from_whole(self, image: np.ndarray) -> AlignedFace:
        h, w = image.shape[:2]
        pixels, m = self._resize_region(image, (0.0, 0.0, float(w), float(h)))
        return AlignedFace(pixels, self.template.copy(), "whole", 1.0, (0.0, 0.0, float(w), float(h)), m)
