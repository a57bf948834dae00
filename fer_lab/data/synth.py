"""SynthFER: procedurally drawn faces with ground truth and controllable domain shift.

Licence-gated real FER data cannot ship, so every notebook and test of fer-lab runs on these drawn faces.
Each face is drawn from four independent groups of latent factors:

* **identity** (one draw per subject, kept across all of the subject's images): head shape, eye spacing and
  size, brow thickness and arch, nose length/width/depth, mouth width and lip thickness, skin tone, iris, lip
  and hair colour, hair style, clothing, and a small personal "resting face" offset of the action units;
* **expression**: a class from :data:`fer_lab.labels.EXPRESSIONS` and an intensity in [0, 1]. The class fixes a
  prototype vector of 15 action-unit parameters (:data:`ACTION_UNITS`, the EMFACS prototypes: happiness AU6+12,
  sadness AU1+4+15+17, surprise AU1+2+5+26, fear AU1+2+4+5+20(+26), anger AU4+5+7+23(+17), disgust
  AU9+10+15+16+25 with the AU4/6/7 squint that AU9 brings;
  :data:`VARIANTS` adds a teeth-baring anger and a closed-lips smile for a share of those classes); the face
  shows ``intensity * prototype + personal offset + per-image jitter``. Neighbouring classes share units
  (fear and surprise both raise brows and lids and drop the jaw; anger and disgust both lower brows and
  tighten lids; sadness is a weak departure from neutral), so they are genuinely confusable at low intensity.
  Every unit acts on the brows/eyes, the nose or the mouth, i.e. around the five landmarks;
* **geometry and light**: the five landmarks of a frontal face fall on the ArcFace / face.evoLVe template that
  real faces are aligned to (:data:`fer_lab.data.align.REFERENCE_5`); the head is shaded as a lit 3D surface
  (Lambert on the head ellipsoid, ambient 0.40, a light from the front and above, turned by the domain's
  lighting), with soft relief bumps (eye sockets, nose bridge and tip, cheeks, the shadow under the nose and the
  lower lip, the chin, the furrows beside the nose and under the lids that AU9 pulls up) and a faint blurred
  skin texture; hair in strands with a soft hairline a third of the face above the brows (a fringe on 12 % of
  people), a catch-light in each eye. The ``zoom`` knob frames the face tighter than the template where a
  dataset's crops are (FER2013's);
* **pose**: yaw, pitch and roll in degrees. Feature points live on a cheap 3D head (a depth profile
  ``z(u) = D sqrt(1 - 0.8 u^2)`` plus feature offsets: the nose protrudes, the eyes sit back) that is rotated
  by yaw and pitch and projected orthographically, with feature widths foreshortened by the local surface
  slope; roll then rotates the whole drawing in the image plane;
* **appearance** (the domain's shift knobs, :class:`SynthDomain`): the fraction of colour images, background
  clutter, directional lighting, exposure/contrast/white balance, occluders (sunglasses, a hand), blur, sensor
  noise, rendering resolution, and the label noise and class prior of the split.

The named presets in :data:`DOMAINS` mimic CK+/JAFFE (``lab``), RAF-DB (``wild``), FER2013 (``lowres``) and
KDEF-like half profiles (``profile``); ``data_cards/synthfer.md`` lists every knob, the preset values and the
measured shift.

Rendering is vectorised over a chunk of faces with torch: every shape is an implicit function (an approximate
signed distance, in face units) turned into anti-aliased coverage by ``clamp(0.5 - distance_in_pixels, 0, 1)``
and alpha-composited back to front. The large layers (background, hair, head, fringe) and the image-wide
effects (light, blur, noise) are evaluated on the whole ``[B, H, W]`` grid; every small part (clothes, neck,
ears, brows, eyes, creases, nose, mouth, occluders) on a per-face window of one size for the chunk, gathered
from the image and scattered back. Pixel-sized temporaries live in reused workspace buffers (allocating fresh
image-sized tensors costs more than computing on them). Only arithmetic, ``sqrt``, ``abs``, ``round``,
``min``/``max``, ``clamp`` and window means (``avg_pool2d``) touch pixel tensors (no transcendental functions,
whose vectorised tails could differ with the thread count) and pixel noise comes from numpy's PCG64, so a given
set of arguments gives bit-identical arrays in every process, whatever the number of threads.

Conventions
-----------
* **Pixels.** Pixel ``(i, j)`` (row ``i``, column ``j``) covers ``[j, j+1) x [i, i+1)`` in image coordinates
  ``(x, y)``; its centre is ``(j + 0.5, i + 0.5)``. Landmarks are continuous ``(x, y)`` in that frame, so a
  horizontal flip maps ``x -> W - x`` (and permutes rows with :data:`fer_lab.labels.FLIP_PERMUTATION`), a crop
  at column ``x0``, row ``y0`` maps ``(x, y) -> (x - x0, y - y0)``, and a resize by ``s`` maps ``p -> s p``.
* **Landmarks** are exact for the drawn image: they are the very points the renderer draws the features
  around: the eye landmark is the centre of the iris and pupil, the nose landmark the nose tip (the apex of
  the nostril/alae drawing), the mouth landmarks the two corners where both lips and the dark lip line end.
  Order is :data:`fer_lab.labels.LANDMARKS`; "left" is the smaller-x point of a frontal unflipped face.
* **Pose** ``(yaw, pitch, roll)`` in degrees. Positive yaw turns the face towards image right (the inner
  features shift to larger x), positive pitch tilts it up (features shift to smaller y relative to the head
  outline), positive roll rotates the drawing clockwise as displayed (y points down).
* **Labels.** ``labels`` are the *observed* labels. Label noise (``label_noise`` knob) is applied to the
  ``train`` split only: a noisy face keeps the expression it was drawn with, but its label is replaced, with
  probability 0.6 by the class's confusion partner and otherwise uniformly by another class. ``test`` and
  ``val`` labels are the clean truth. The rate is recorded in ``meta["label_noise"]``; the clean train labels
  are not stored (re-render with ``label_noise=0`` to get them; everything else is unchanged).
* **Splits.** ``train``, ``val`` and ``test`` draw from disjoint random streams and disjoint subject ids;
  ``all`` is the concatenation of a ``train`` part of ``n - n // 5`` faces and a ``test`` part of ``n // 5``.
* **Personalised sets.** ``subject=K`` (or ``subject=0,1,2``) makes every face one of those people of the
  domain's held-out (``test``-split) identity pool, in every split: the ``train`` split then holds a person's
  unlabelled adaptation faces and the ``test`` split other faces of the same person (pose-aware personalised
  adaptation, ``fer_lab/methods/pose_ada.py``). :func:`render_at_pose` re-renders chosen faces at another pose
  (same person, expression, light and background): the truth of a pose swap.
* **Determinism.** Random draws come from :class:`numpy.random.SeedSequence` streams keyed by
  ``(seed, split, domain name, stream name)`` (identities by subject too, so subject ``k`` is the same person
  whatever ``n`` is); overriding a knob of a domain keeps every other draw, so e.g.
  ``synth:lab?occlusion=0.5`` shows the same people, poses and expressions as ``synth:lab``. The image size
  does not change the faces either, only their pixels (landmarks scale exactly with the size).
* **Noise.** ``noise`` is the standard deviation of uniform luminance noise (one random byte per pixel, added
  to all channels), drawn before any resize.
* **Caching.** Results are stored with :meth:`FaceArrays.save` under ``$FER_LAB_CACHE/synth`` (default
  ``~/.cache/fer-lab/synth``) keyed by a hash of all arguments, the domain's knobs and
  :data:`RENDERER_VERSION` (bump it whenever drawing changes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from fer_lab.data.spec import DATASETS
from fer_lab.data.store import FaceArrays
from fer_lab.labels import EXPRESSIONS, NUM_CLASSES

__all__ = [
    "ACTION_UNITS", "CONFUSION_PARTNER", "DOMAINS", "PROTOTYPES", "RENDERER_VERSION", "SynthDomain",
    "default_cache_dir", "face_geometry", "landmarks_of", "make_synthfer", "parse_subjects", "posed_faces", "render",
    "render_at_pose", "resolve_domain", "sample_faces", "VARIANTS", "VARIANT_SHARE",
]

#: Bump whenever the drawing, the parameter sampling or the chunking changes: it is part of the cache key.
RENDERER_VERSION = 4

#: Faces rendered together; part of the noise-stream layout, so changing it changes the images.
_CHUNK = 64
_CLUTTER_TERMS = 3  # plaid terms of a cluttered background
_CLUTTER_STEPS = 5  # breakpoints of each term's step profiles
_ZOOM_CENTRE = 0.8  # the image row a zoom magnifies about: the template's mouth row (0.82), so the chin stays in

# ---------------------------------------------------------------------------------------------------------
# Expression model
# ---------------------------------------------------------------------------------------------------------

#: Action-unit-like parameters (FACS numbers in brackets), each in [0, ~1.2].
ACTION_UNITS: tuple[str, ...] = (
    "brow_raise",       # AU1+2  whole brow up, more arched
    "brow_inner",       # AU1    inner brow ends up (oblique "worried" brows)
    "brow_lower",       # AU4    brows down and drawn together, vertical glabella lines
    "lid_raise",        # AU5    upper lid up: wide eyes, white above the iris
    "lid_tight",        # AU7    lids narrowed
    "cheek_raise",      # AU6    lower lid pushed up, crease under the eye
    "nose_wrinkle",     # AU9    lines across the nose bridge, nostrils up and flared
    "upper_lip_raise",  # AU10   upper lip up, teeth show, deep nasolabial folds
    "lip_pull",         # AU12   lip corners up and out (smile)
    "lip_depress",      # AU15   lip corners down
    "lip_stretch",      # AU20   lips stretched sideways
    "lip_press",        # AU23/24 lips pressed thin
    "jaw_drop",         # AU25-27 mouth open, jaw down
    "chin_raise",       # AU17   chin boss and lower lip pushed up (pout), a shadow under the lip
    "lower_lip_depress",  # AU16 lower lip pulled down and everted, lower teeth show, a squarer opening
)
_AU = {name: i for i, name in enumerate(ACTION_UNITS)}


def _proto(**units: float) -> list[float]:
    row = [0.0] * len(ACTION_UNITS)
    for k, v in units.items():
        row[_AU[k]] = v
    return row


#: Prototype action units of each class at intensity 1, rows in EXPRESSIONS order. Neighbours share units.
PROTOTYPES: np.ndarray = np.array([
    _proto(brow_raise=1.0, lid_raise=0.9, jaw_drop=1.0),                                          # surprise
    _proto(brow_raise=0.4, brow_inner=1.0, brow_lower=0.35, lid_raise=1.3, lid_tight=0.2, lip_stretch=1.4,
           lip_depress=0.5, upper_lip_raise=0.2, jaw_drop=0.6),                                                       # fear
    _proto(brow_lower=0.5, lid_tight=0.7, cheek_raise=0.6, nose_wrinkle=1.0, upper_lip_raise=0.9,
           lip_depress=1.2, lower_lip_depress=0.9, jaw_drop=0.25),                                                # disgust
    _proto(cheek_raise=1.0, lid_tight=0.2, lip_pull=1.1, jaw_drop=0.3),                            # happiness
    _proto(brow_inner=1.3, brow_lower=0.45, lid_tight=0.4, lip_depress=1.3, chin_raise=0.9),                # sadness
    _proto(brow_lower=1.0, lid_raise=0.35, lid_tight=0.6, nose_wrinkle=0.25, lip_press=1.0, chin_raise=0.5),    # anger
    _proto(),                                                                                     # neutral
], dtype=np.float64)

#: A second display of some classes (EMFACS lists several per emotion), drawn for a share of that class's faces:
#: an open-mouthed, teeth-baring anger (AU4+5+7+10+25/26) beside the pressed-lips one, a closed-lips smile beside
#: the open one, a closed-mouth sadness and a wider-jawed fear.
VARIANTS: np.ndarray = PROTOTYPES.copy()
VARIANTS[EXPRESSIONS.index("anger")] = _proto(brow_lower=1.0, lid_raise=0.5, lid_tight=0.5, nose_wrinkle=0.4,
                                              upper_lip_raise=0.7, lip_stretch=0.3, jaw_drop=0.45)
VARIANTS[EXPRESSIONS.index("happiness")] = _proto(cheek_raise=0.9, lid_tight=0.2, lip_pull=1.0, lip_press=0.3)
VARIANT_SHARE: np.ndarray = np.array([0.0 if e not in ("anger", "happiness") else (0.4 if e == "anger" else 0.15)
                                      for e in EXPRESSIONS])

#: The class a noisy annotator most often confuses each class with (used by label noise).
CONFUSION_PARTNER: dict[str, str] = {
    "surprise": "fear", "fear": "surprise", "disgust": "anger", "anger": "disgust",
    "sadness": "neutral", "neutral": "sadness", "happiness": "neutral",
}
_PARTNER = np.array([EXPRESSIONS.index(CONFUSION_PARTNER[e]) for e in EXPRESSIONS])

#: Class priors of the real datasets the presets mimic (EXPRESSIONS order).
_BALANCED = (1.0,) * NUM_CLASSES
_RAFDB_PRIOR = (1290, 281, 717, 4772, 1982, 705, 2524)      # RAF-DB basic, train split
_FER2013_PRIOR = (4002, 5121, 547, 8989, 6077, 4953, 6198)  # FER2013, all splits


# ---------------------------------------------------------------------------------------------------------
# Domains
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthDomain:
    """A named preset of shift knobs. Ranges ``(lo, hi)`` are sampled uniformly per image.

    Only ``name`` keys the random streams (with seed and split), so two domains that differ in a knob but
    share a name show the same people, expressions and poses.
    """

    #: keys the random streams (with seed and split) and names the cache entries
    name: str = "custom"
    #: fraction of images rendered in colour (0: all grey, the channel repeated three times; 1: all colour)
    color: float = 0.0
    #: render at this size and resize to the requested one (0: render at the requested size)
    render_size: int = 0
    #: relative class frequencies in EXPRESSIONS order (normalised; counts exact up to rounding; "1,1,..." in a spec)
    class_prior: tuple[float, ...] = _BALANCED
    #: expression intensity range (scales the class's action-unit prototype)
    intensity: tuple[float, float] = (0.75, 1.0)
    #: standard deviation of per-image action-unit jitter
    au_noise: float = 0.05
    #: standard deviation of each subject's personal resting action-unit offsets
    idiosyncrasy: float = 0.04
    #: probability that a train label is replaced (train split only; test/val labels are clean)
    label_noise: float = 0.0
    #: range of |yaw| in degrees; the sign is random
    yaw: tuple[float, float] = (0.0, 3.0)
    #: pitch uniform in [-pitch, pitch] degrees
    pitch: float = 3.0
    #: roll uniform in [-roll, roll] degrees
    roll: float = 2.0
    #: relative standard deviation of the head size
    scale_jitter: float = 0.03
    #: standard deviation of the head position, as a fraction of the image size
    shift_jitter: float = 0.015
    #: framing: 1 puts a frontal face's five landmarks on the ArcFace template, as fer-lab's aligner puts real
    #: faces; above 1 a tighter crop, magnified about the point (0.5, 0.8) of the image, the forehead cut and the
    #: chin kept (FER2013's 48 px web crops, which fer-lab resizes whole: about 1.27, the eyes 0.4 of the width
    #: apart and 0.37 from the top)
    zoom: float = 1.0
    #: strength range of a directional shading ramp across the image (0: even light; 1: strong side light)
    lighting: tuple[float, float] = (0.0, 0.1)
    #: standard deviation of the log exposure gain (the log contrast factor gets 0.7 times this)
    exposure: float = 0.05
    #: standard deviation of the log white-balance gain of each channel (colour images only)
    color_cast: float = 0.0
    #: skin tone range, 0 lightest .. 1 darkest
    skin_tone: tuple[float, float] = (0.0, 1.0)
    #: background clutter, 0 plain studio backdrop .. 1 busy coloured scene
    clutter: float = 0.0
    #: probability that an occluder (sunglasses or a hand) covers part of the face
    occlusion: float = 0.0
    #: blur range: 0 sharp, 1 one 3x3 box-filter pass, 2 two passes (fractions blend between them)
    blur: tuple[float, float] = (0.0, 0.3)
    #: range of the standard deviation of uniform luminance noise (intensities in 0..1)
    noise: tuple[float, float] = (0.0, 0.01)
    #: average number of images of each subject
    images_per_subject: int = 10

    def knobs(self) -> dict[str, Any]:
        """All knobs as a JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **knobs: Any) -> "SynthDomain":
        """A copy with knobs overridden; values may be strings (as from a spec); unknown names raise."""
        return _with_knobs(self, knobs)


DOMAINS: dict[str, SynthDomain] = {
    # CK+ / JAFFE: posed, strong, grey, frontal, studio light, plain backdrop, few subjects, balanced.
    "lab": SynthDomain(
        name="lab", color=0.1, class_prior=_BALANCED, intensity=(0.7, 1.0), au_noise=0.05,
        idiosyncrasy=0.04, label_noise=0.0, yaw=(0.0, 4.0), pitch=3.0, roll=3.0, scale_jitter=0.03,
        shift_jitter=0.015, lighting=(0.0, 0.15), exposure=0.06, color_cast=0.0, skin_tone=(0.0, 0.6),
        clutter=0.0, occlusion=0.0, blur=(0.0, 0.5), noise=(0.0, 0.015), images_per_subject=10,
    ),
    # RAF-DB: colour, in-the-wild pose, light, clutter, occluders, blur, noise, weaker spontaneous
    # expressions, noisy crowd labels and a skewed prior (many happy, few fear/disgust).
    "wild": SynthDomain(
        name="wild", color=1.0, class_prior=_RAFDB_PRIOR, intensity=(0.35, 0.95), au_noise=0.1,
        idiosyncrasy=0.08, label_noise=0.1, yaw=(0.0, 35.0), pitch=12.0, roll=10.0, scale_jitter=0.07,
        shift_jitter=0.035, lighting=(0.1, 0.6), exposure=0.12, color_cast=0.06, skin_tone=(0.0, 1.0),
        clutter=0.7, occlusion=0.25, blur=(0.0, 1.0), noise=(0.005, 0.03), images_per_subject=2,
    ),
    # FER2013: 48x48 grey web crops, tighter than the template (resized whole), moderate pose, noise, mid-strength
    # expressions, its own skewed prior.
    "lowres": SynthDomain(
        name="lowres", color=0.0, render_size=48, class_prior=_FER2013_PRIOR, intensity=(0.45, 1.0),
        au_noise=0.08, idiosyncrasy=0.06, label_noise=0.08, yaw=(0.0, 25.0), pitch=10.0, roll=8.0,
        scale_jitter=0.06, shift_jitter=0.03, zoom=1.27, lighting=(0.1, 0.5), exposure=0.1, color_cast=0.0,
        skin_tone=(0.0, 1.0), clutter=0.35, occlusion=0.1, blur=(0.0, 0.5), noise=(0.01, 0.04),
        images_per_subject=3,
    ),
    # KDEF half profiles (KDEF shoots 0, +-45 and +-90 deg; here |yaw| 40-70): posed, colour, studio, balanced.
    "profile": SynthDomain(
        name="profile", color=1.0, class_prior=_BALANCED, intensity=(0.7, 1.0), au_noise=0.05,
        idiosyncrasy=0.05, label_noise=0.0, yaw=(40.0, 70.0), pitch=4.0, roll=3.0, scale_jitter=0.03,
        shift_jitter=0.015, lighting=(0.0, 0.2), exposure=0.05, color_cast=0.02, skin_tone=(0.0, 0.7),
        clutter=0.0, occlusion=0.0, blur=(0.0, 0.3), noise=(0.0, 0.01), images_per_subject=14,
    ),
}

_KNOBS = {f.name: f for f in fields(SynthDomain)}
_PAIR_KNOBS = ("intensity", "yaw", "lighting", "skin_tone", "blur", "noise")


def _with_knobs(base: SynthDomain, knobs: Mapping[str, Any]) -> SynthDomain:
    unknown = sorted(set(knobs) - set(_KNOBS))
    if unknown:
        raise ValueError(
            f"unknown SynthFER knob(s) {', '.join(map(repr, unknown))}; known knobs: {', '.join(_KNOBS)}"
        )
    values = {k: _coerce(k, v) for k, v in knobs.items()}
    dom = dataclasses.replace(base, **values)
    _validate(dom)
    return dom


def _coerce(name: str, value: Any) -> Any:
    """Turn a spec-string value (or a list) into the knob's type."""
    default = getattr(SynthDomain, name) if name != "class_prior" else _BALANCED
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [p for p in value.replace(";", ",").split(",") if p.strip()]
            elif isinstance(value, (int, float)):
                value = [value, value] if name in _PAIR_KNOBS else [value]
            return tuple(float(x) for x in value)
        if isinstance(default, int) and not isinstance(default, bool):
            f = float(value)
            if f != int(f):
                raise ValueError(value)
            return int(f)
        if isinstance(default, float):
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return 1.0 if value.lower() == "true" else 0.0
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"SynthFER knob {name!r}: cannot use value {value!r}") from None


def _validate(d: SynthDomain) -> None:
    def bad(name: str, why: str) -> ValueError:
        return ValueError(f"SynthFER domain {d.name!r}: knob {name!r} = {getattr(d, name)!r} {why}")

    for name in _PAIR_KNOBS:
        v = getattr(d, name)
        if len(v) != 2 or not v[0] <= v[1]:
            raise bad(name, "must be a pair lo,hi with lo <= hi")
    if len(d.class_prior) != NUM_CLASSES or min(d.class_prior) < 0 or sum(d.class_prior) <= 0:
        raise bad("class_prior", f"must be {NUM_CLASSES} non-negative weights with a positive sum")
    for name in ("color", "label_noise", "occlusion", "clutter"):
        if not 0.0 <= getattr(d, name) <= 1.0:
            raise bad(name, "must lie in [0, 1]")
    for name in ("au_noise", "idiosyncrasy", "pitch", "roll", "scale_jitter", "shift_jitter", "exposure",
                 "color_cast"):
        if getattr(d, name) < 0:
            raise bad(name, "must be >= 0")
    if not (0 <= d.yaw[0] and d.yaw[1] <= 80):
        raise bad("yaw", "must lie within [0, 80] degrees")
    if d.pitch > 40 or d.roll > 45:
        raise bad("pitch" if d.pitch > 40 else "roll", "is too large (pitch <= 40, roll <= 45)")
    if d.intensity[0] < 0 or d.intensity[1] > 1.5:
        raise bad("intensity", "must lie within [0, 1.5]")
    if d.blur[0] < 0 or d.blur[1] > 4 or d.noise[0] < 0 or d.lighting[0] < 0:
        raise bad("blur" if d.blur[0] < 0 or d.blur[1] > 4 else "noise" if d.noise[0] < 0 else "lighting",
                  "is out of range")
    if not 0 <= d.skin_tone[0] <= d.skin_tone[1] <= 1:
        raise bad("skin_tone", "must lie within [0, 1]")
    if d.images_per_subject < 1:
        raise bad("images_per_subject", "must be >= 1")
    if d.render_size and d.render_size < 16:
        raise bad("render_size", "must be 0 or >= 16")
    if not 0.5 <= d.zoom <= 2.0:
        raise bad("zoom", "must lie within [0.5, 2]")


def resolve_domain(domain: str | SynthDomain, **knob_overrides: Any) -> SynthDomain:
    """A :class:`SynthDomain` from a preset name or an instance, with knobs overridden."""
    if isinstance(domain, SynthDomain):
        base = domain
    elif isinstance(domain, str) and domain.strip().lower() in DOMAINS:
        base = DOMAINS[domain.strip().lower()]
    else:
        raise ValueError(f"unknown SynthFER domain {domain!r}; known domains: {', '.join(DOMAINS)}")
    return _with_knobs(base, knob_overrides)


# ---------------------------------------------------------------------------------------------------------
# Random streams
# ---------------------------------------------------------------------------------------------------------

_SPLIT_CODES = {"train": 0, "test": 1, "val": 2}


def _code(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _rng(seed: int, split: str, domain: str, stream: str, *extra: int) -> np.random.Generator:
    ss = np.random.SeedSequence([int(seed), _SPLIT_CODES[split], _code(domain), _code(stream), *extra])
    return np.random.Generator(np.random.PCG64(ss))


def _subject_base(domain: str, split: str) -> int:
    """Subject ids are ``base + k``; bases differ per (domain name, split), so ids never collide."""
    return ((_code(domain) % 900) + 100) * 10_000_000 + _SPLIT_CODES[split] * 1_000_000


# ---------------------------------------------------------------------------------------------------------
# Palettes
# ---------------------------------------------------------------------------------------------------------

_SKIN = np.array([[0.98, 0.86, 0.76], [0.92, 0.74, 0.60], [0.78, 0.56, 0.40], [0.55, 0.37, 0.25],
                  [0.34, 0.22, 0.15]])
_HAIR = np.array([[0.06, 0.05, 0.05], [0.18, 0.11, 0.07], [0.36, 0.23, 0.13], [0.78, 0.64, 0.40],
                  [0.55, 0.24, 0.11], [0.62, 0.62, 0.62]])
_HAIR_P = np.array([0.34, 0.26, 0.18, 0.1, 0.05, 0.07])
_IRIS = np.array([[0.30, 0.18, 0.09], [0.14, 0.09, 0.06], [0.42, 0.34, 0.16], [0.30, 0.46, 0.66],
                  [0.28, 0.42, 0.28]])
_IRIS_P = np.array([0.4, 0.3, 0.12, 0.12, 0.06])


_LUMA = np.array([0.299, 0.587, 0.114])


def _palette(table: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Piecewise-linear colour ramp, ``t`` in [0, 1]."""
    x = np.clip(t, 0, 1) * (len(table) - 1)
    i = np.minimum(x.astype(int), len(table) - 2)
    f = (x - i)[:, None]
    return table[i] * (1 - f) + table[i + 1] * f


# ---------------------------------------------------------------------------------------------------------
# Sampling: labels, subjects, identities, expressions, poses, appearance -> per-face geometry
# ---------------------------------------------------------------------------------------------------------

def _class_counts(prior: tuple[float, ...], n: int) -> np.ndarray:
    p = np.asarray(prior, np.float64)
    p = p / p.sum()
    raw = p * n
    counts = np.floor(raw).astype(np.int64)
    rest = n - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


def _identities(seed: int, split: str, domain: SynthDomain, n_subjects: int) -> dict[str, np.ndarray]:
    """Identity parameters of subjects 0..n_subjects-1; subject k's draw does not depend on n_subjects."""
    u = np.empty((n_subjects, 40))
    z = np.empty((n_subjects, len(ACTION_UNITS)))
    cu = np.empty((n_subjects, 10))
    for k in range(n_subjects):  # one stream per subject: subject k is the same person whatever n is
        r = _rng(seed, split, domain.name, "identity", k)
        u[k], z[k], cu[k] = r.random(40), r.standard_normal(len(ACTION_UNITS)), r.random(10)

    def rng_(i: int, lo: float, hi: float) -> np.ndarray:
        return lo + (hi - lo) * u[:, i]

    lo, hi = domain.skin_tone
    ident = {
        "face_scale": rng_(0, 0.93, 1.06),
        "fh_up": rng_(1, 1.2, 1.34),        # head half-height above the centre (cranium)
        "fh_lo": rng_(2, 1.36, 1.5),        # head half-height below the centre (to the chin)
        "egg": rng_(3, 0.05, 0.14),         # jaw narrower than the cranium
        "eye_v": rng_(4, -0.08, 0.0),
        "eye_d": rng_(5, 0.4, 0.46),        # half the inter-ocular distance
        "eye_w": rng_(6, 0.16, 0.2),
        "eye_h": rng_(7, 0.05, 0.064),
        "iris": rng_(8, 0.072, 0.086),
        "brow_gap": rng_(9, 0.15, 0.19),
        "brow_t": rng_(10, 0.019, 0.034),
        "brow_arch": rng_(11, 0.02, 0.055),
        "nose_v": rng_(12, 0.44, 0.52),     # nose tip below the eyes
        "nose_w": rng_(13, 0.075, 0.105),
        "nose_p": rng_(14, 0.22, 0.34),     # nose protrusion
        "mouth_v": rng_(15, 0.42, 0.5),     # mouth below the nose tip
        "mouth_w": rng_(16, 0.31, 0.37),
        "lip_u": rng_(17, 0.045, 0.07),
        "lip_l": rng_(18, 0.06, 0.09),
        "skin_t": rng_(19, lo, hi),
        "rest_au": z * domain.idiosyncrasy,
        # the hairline a third of the face above the brows, as on most adults; 12 % wear a fringe over the forehead
        "hairline": np.where(u[:, 39] < 0.12, rng_(33, -0.75, -0.55), rng_(33, -1.12, -0.86)),
        "hair_curve": rng_(34, 0.25, 0.8),
        "hair_part": rng_(35, -0.25, 0.25),
        "hair_len": np.where(u[:, 36] < 0.45, 0.2 + 0.3 * u[:, 36], 0.5 + 1.4 * (u[:, 36] - 0.45)),
        "hair_vol": rng_(37, 1.04, 1.16),
        "bald": (u[:, 38] < 0.06).astype(np.float64),
    }
    # colours
    ident["skin"] = _palette(_SKIN, ident["skin_t"]) * (0.96 + 0.08 * cu[:, 0:1])
    hair_idx = np.searchsorted(np.cumsum(_HAIR_P), cu[:, 1] * _HAIR_P.sum(), side="right")
    hair_idx = np.minimum(hair_idx, len(_HAIR) - 1)
    ident["hair"] = _HAIR[hair_idx] * (0.8 + 0.4 * cu[:, 2:3])
    iris_idx = np.minimum(np.searchsorted(np.cumsum(_IRIS_P), cu[:, 3], side="right"), len(_IRIS) - 1)
    ident["iris_c"] = _IRIS[iris_idx]
    ident["lip_c"] = ident["skin"] * np.array([0.95, 0.75, 0.74]) * (0.92 + 0.1 * cu[:, 4:5])
    ident["cloth"] = 0.15 + 0.7 * cu[:, 5:8]
    ident["brow_c"] = ident["hair"] * 0.55 + 0.02
    return ident


def sample_faces(domain: SynthDomain, n: int, seed: int, split: str,
                 subjects: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    """Draw everything about ``n`` faces except pixels: labels, subjects, action units, pose, appearance.

    Returns a dict of per-face numpy arrays (first axis ``n``); :func:`face_geometry` turns it into drawing
    parameters, :func:`render` into pixels.

    ``subjects`` (personalised targets): every face shows one of these people, dealt round-robin in a shuffled
    order; person ``k`` is subject ``k`` of the domain's ``test``-split identity pool whatever ``split`` is, so the
    ``train`` and ``test`` splits of such a set show the same people (different expressions, poses and
    appearance), and none of the domain's ``train``-split people. ``subject_k`` then holds ``k``. ``None`` (the
    default) draws exactly what it always drew.
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"split {split!r} is not one of {', '.join(_SPLIT_CODES)} (or 'all')")
    d = domain
    # labels: exact class counts, shuffled
    r = _rng(seed, split, d.name, "labels")
    counts = _class_counts(d.class_prior, n)
    truth = r.permutation(np.repeat(np.arange(NUM_CLASSES), counts))
    flip_u = r.random(n)
    partner_u = r.random(n)
    other = r.integers(1, NUM_CLASSES, n)
    observed = truth.copy()
    if split == "train" and d.label_noise > 0:
        noisy = flip_u < d.label_noise
        alt = np.where(partner_u < 0.6, _PARTNER[truth], (truth + other) % NUM_CLASSES)
        observed = np.where(noisy, alt, truth)
    # subjects: balanced assignment
    r = _rng(seed, split, d.name, "subjects")
    if subjects is None:
        n_subj = max(1, math.ceil(n / d.images_per_subject))
        if n_subj >= 1_000_000:
            raise ValueError(f"SynthFER: {n_subj} subjects is too many (n / images_per_subject < 1e6)")
        subj_k = r.permutation(n) % n_subj
        ident = _identities(seed, split, d, n_subj)
        face = {k: v[subj_k] for k, v in ident.items()}
    else:
        chosen = np.asarray(subjects, np.int64)
        subj_k = chosen[r.permutation(n) % len(chosen)]
        ident = _identities(seed, "test", d, int(chosen.max()) + 1)
        face = {k: v[subj_k] for k, v in ident.items()}
    # expression
    r = _rng(seed, split, d.name, "expression")
    lo, hi = d.intensity
    intensity = lo + (hi - lo) * r.random(n)
    jitter = r.standard_normal((n, len(ACTION_UNITS)))
    variant = r.random(n) < VARIANT_SHARE[truth]
    proto = np.where(variant[:, None], VARIANTS[truth], PROTOTYPES[truth])
    au = intensity[:, None] * proto + d.au_noise * jitter + face.pop("rest_au")
    au = np.clip(au, 0.0, 1.25)
    # pose and framing
    r = _rng(seed, split, d.name, "pose")
    sign = np.where(r.random(n) < 0.5, -1.0, 1.0)
    yaw = sign * (d.yaw[0] + (d.yaw[1] - d.yaw[0]) * r.random(n))
    pitch = d.pitch * (2 * r.random(n) - 1)
    roll = d.roll * (2 * r.random(n) - 1)
    scale = np.exp(d.scale_jitter * r.standard_normal(n))
    shift = d.shift_jitter * r.standard_normal((n, 2))
    if d.zoom != 1.0:  # magnify about (0.5, _ZOOM_CENTRE): the head centre sits at (0.5, 0.475) + shift
        scale = scale * d.zoom
        shift = shift * d.zoom + np.array([0.0, (0.475 - _ZOOM_CENTRE) * (d.zoom - 1.0)])
    # appearance
    r = _rng(seed, split, d.name, "appearance")
    a = r.random((n, 24))
    light_ang = 2 * np.pi * a[:, 0]
    light = d.lighting[0] + (d.lighting[1] - d.lighting[0]) * a[:, 1]
    gains = np.exp(d.color_cast * r.standard_normal((n, 3)))
    exposure = np.exp(d.exposure * r.standard_normal(n))
    contrast = np.exp(0.7 * d.exposure * r.standard_normal(n))
    occ_u = a[:, 2]
    occluder = np.where(occ_u < d.occlusion, np.where(a[:, 3] < 0.4, 1, 2), 0)
    bg_rgb = 0.25 + 0.6 * r.random((n, 3))
    bg_grey = np.repeat((0.35 + 0.5 * a[:, 4])[:, None], 3, axis=1)
    colour = a[:, 13] < d.color
    bg_plain = np.where(colour[:, None], bg_rgb, bg_grey)  # colour backdrops for colour images, grey studio otherwise
    # clutter: a colour gradient plus three "plaid" terms, each the product of two random step profiles
    clutter_col = (r.random((n, _CLUTTER_TERMS, 1)) * 2 - 1) * 0.8 + (r.random((n, _CLUTTER_TERMS, 3)) * 2 - 1) * 0.3
    clutter_grad = (r.random((n, 2, 1)) * 2 - 1) + (r.random((n, 2, 3)) * 2 - 1) * 0.4
    steps = np.sort(r.random((n, _CLUTTER_TERMS, 2, _CLUTTER_STEPS)), axis=-1)
    levels = r.random((n, _CLUTTER_TERMS, 2, _CLUTTER_STEPS + 1))
    return {
        "truth": truth, "labels": observed, "colour": colour, "subject_k": subj_k, "au": au, "intensity": intensity,
        "yaw": yaw, "pitch": pitch, "roll": roll, "scale": scale, "shift": shift,
        "light_dir": np.stack([np.cos(light_ang), np.sin(light_ang)], 1), "light": light,
        "gains": gains, "exposure": exposure, "contrast": contrast,
        "occluder": occluder, "occ_pos": a[:, 5:9], "bg_plain": bg_plain, "bg_grad": a[:, 9] - 0.5,
        "clutter_col": clutter_col, "clutter_grad": clutter_grad, "clutter_steps": steps,
        "clutter_levels": levels,
        "blur": d.blur[0] + (d.blur[1] - d.blur[0]) * a[:, 11],
        "noise": d.noise[0] + (d.noise[1] - d.noise[0]) * a[:, 12],
        **face,
    }


# --- geometry --------------------------------------------------------------------------------------------

_DEPTH = 0.72  # depth of the head surface in face units (face half-width = 1)


def _surface_z(u: np.ndarray) -> np.ndarray:
    return _DEPTH * np.sqrt(np.maximum(1.0 - 0.8 * u * u, 0.05))


def _surface_dz(u: np.ndarray) -> np.ndarray:
    return -_DEPTH * 0.8 * u / np.sqrt(np.maximum(1.0 - 0.8 * u * u, 0.05))


class _Pose:
    def __init__(self, yaw_deg: np.ndarray, pitch_deg: np.ndarray) -> None:
        t, p = np.radians(yaw_deg), np.radians(pitch_deg)
        self.cy, self.sy, self.cp, self.sp = np.cos(t), np.sin(t), np.cos(p), np.sin(p)

    def __call__(self, u, v, dz=0.0):
        """Project face point (u, v) lying ``dz`` in front of the head surface; returns (u', v')."""
        z = _surface_z(u) + dz
        u2 = u * self.cy + z * self.sy
        z1 = -u * self.sy + z * self.cy
        return u2, v * self.cp - z1 * self.sp

    def fx(self, u):
        """Horizontal foreshortening of a small feature at u."""
        return np.maximum(self.cy + _surface_dz(u) * self.sy, 0.1)

    @property
    def fy(self):
        return np.maximum(self.cp, 0.3)


def _stroke(p0, p1, bulge, t0, t1=None) -> dict[str, np.ndarray]:
    """Chord parameters of a curved stroke from p0 to p1 (face units).

    ``bulge`` is the offset of the stroke's middle from the chord along the chord's left normal
    (``(-cv, cu)``, i.e. downwards for a left-to-right chord); thickness tapers from t0 to t1 (half widths).
    """
    (u0, v0), (u1, v1) = p0, p1
    du, dv = u1 - u0, v1 - v0
    length = np.maximum(np.hypot(du, dv), 1e-6)
    t1 = t0 if t1 is None else t1
    bulge, t0, t1 = (np.broadcast_to(np.asarray(x, np.float64), length.shape) for x in (bulge, t0, t1))
    return {"mu": (u0 + u1) / 2, "mv": (v0 + v1) / 2, "cu": du / length, "cv": dv / length,
            "L": length / 2, "bulge": bulge, "t0": t0, "t1": t1}


#: the nasolabial fold's half width and the width over which its shadow fades out, in face units (a fold is a
#: soft furrow about 3 px wide at 112 px, not a drawn line: a one-pixel line vanishes at the 48-64 px that
#: expression models see)
_FOLD_WIDTH, _FOLD_SOFT = 0.025, 0.05


def face_geometry(s: dict[str, np.ndarray], size: int) -> dict[str, Any]:
    """Drawing parameters (face frame, after yaw/pitch) and the frame transform for images of ``size`` px.

    The face frame has the head centre at (0, 0), x to the right, y down, unit = head half-width. A face point
    (u, v) sits at pixel ``(cx, cy) + R * Rot(roll) (u, v)``.
    """
    g: dict[str, Any] = {}
    au = {name: s["au"][:, i] for i, name in enumerate(ACTION_UNITS)}
    BR, BI, BL = au["brow_raise"], au["brow_inner"], au["brow_lower"]
    LR, LT, CR = au["lid_raise"], au["lid_tight"], au["cheek_raise"]
    NW, UL, LP = au["nose_wrinkle"], au["upper_lip_raise"], au["lip_pull"]
    LD, LS, PR, JD = au["lip_depress"], au["lip_stretch"], au["lip_press"], au["jaw_drop"]
    CH, LL = au["chin_raise"], au["lower_lip_depress"]
    P = _Pose(s["yaw"], s["pitch"])
    sy = P.sy
    fy = P.fy
    R = 0.366 * size * s["face_scale"] * s["scale"]
    g["R"] = R
    g["cx"] = size * (0.5 + s["shift"][:, 0])
    g["cy"] = size * (0.475 + s["shift"][:, 1])
    rr = np.radians(s["roll"])
    g["cos"], g["sin"] = np.cos(rr), np.sin(rr)
    px = 1.0 / R  # one pixel in face units
    # head outline, ears, hair, neck, clothes
    g["head_u"] = 0.15 * sy
    g["head_a"] = 1.0 - 0.07 * np.abs(sy)
    g["fh_up"], g["fh_lo"], g["egg"] = s["fh_up"], s["fh_lo"] + 0.1 * JD, s["egg"]
    ears = []
    for side in (-1.0, 1.0):
        eu, ev = P(side * 0.97 * np.ones_like(sy), s["eye_v"] + 0.14, -0.75)
        ears.append((eu, ev))
    g["ears"] = ears
    g["ear_a"] = 0.07 + 0.08 * np.abs(sy)
    g["hair_u"] = -0.24 * sy
    g["hair_a"] = s["hair_vol"] + 0.1 * np.abs(sy)
    g["hair_b"] = s["fh_up"] + 0.1 * s["hair_vol"]
    g["hair_len"], g["hair_amt"] = s["hair_len"], 1.0 - s["bald"]
    g["hairline"] = np.minimum(s["hairline"], s["eye_v"] - s["brow_gap"] - 0.2) - 0.2 * s["pitch"] / 30
    g["hair_curve"], g["hair_part"] = s["hair_curve"], s["hair_part"] + 0.5 * sy
    # eyes
    eye_v = s["eye_v"]
    # AU9 narrows the eyes: it pulls the skin beside the nose up and bunches it under the lower lids
    open_up = s["eye_h"] * np.clip(1 + 1.4 * LR - 0.45 * LT - 0.4 * BI - 0.2 * CR - 0.25 * BL - 0.35 * NW, 0.2, None)
    open_lo = s["eye_h"] * np.clip(1.0 + 0.45 * LR - 0.7 * CR - 0.35 * LT - 0.6 * NW, 0.15, None)
    g["eyes"] = []
    g["brows"] = []
    g["eye_creases"] = []  # (stroke, strength) under each eye (cheek raise)
    g["mid_creases"] = []  # (stroke, strength) between the eyes
    for side in (-1.0, 1.0):
        cu0 = side * s["eye_d"]
        eu, ev = P(cu0, eye_v, -0.05)
        fxe = P.fx(cu0)
        g["eyes"].append({
            "u": eu, "v": ev, "w": s["eye_w"] * fxe, "up": open_up * fy, "lo": open_lo * fy,
            "ir_u": s["iris"] * fxe, "ir_v": s["iris"] * fy, "lash": np.maximum(0.012, 0.6 * px),
        })
        # brow: inner and outer ends; lower brows come together, inner raise makes them oblique
        bi_u = side * (s["eye_d"] - 0.12 - 0.07 * BL)
        bi_v = eye_v - s["brow_gap"] - 0.1 * BR - 0.13 * BI + 0.16 * BL
        bo_u = side * (s["eye_d"] + s["eye_w"] + 0.04)
        bo_v = eye_v - s["brow_gap"] + 0.02 - 0.1 * BR + 0.04 * BI + 0.05 * BL
        p_in, p_out = P(bi_u, bi_v, 0.02), P(bo_u, bo_v, 0.02)
        arch = np.maximum(s["brow_arch"] + 0.04 * BR - 0.05 * BL - 0.02 * BI, -0.01) * fy
        t = np.maximum(s["brow_t"] * (1 + 0.4 * BL) * fy, 0.6 * px)
        # order the chord left->right so that a negative bulge arches upwards
        left, right = (p_out, p_in) if side < 0 else (p_in, p_out)
        t_l, t_r = (0.65 * t, t) if side < 0 else (t, 0.65 * t)
        g["brows"].append(_stroke(left, right, -arch, t_l, t_r))
        # crease under the eye (cheek raise)
        cl = P(cu0 - 0.8 * s["eye_w"], eye_v + open_lo + 0.04, -0.04)
        cr = P(cu0 + 0.8 * s["eye_w"], eye_v + open_lo + 0.04, -0.04)
        creases = [(_stroke(cl, cr, 0.02 * fy, np.maximum(0.009, 0.5 * px)), 0.3 * np.clip(CR, 0, 1))]
        # crow's feet (AU6): short lines fanning out from the outer eye corner
        for dv_a, dv_b in ((-0.02, -0.06), (0.015, 0.03), (0.05, 0.11)):
            a = P(cu0 + side * (s["eye_w"] + 0.04), eye_v + dv_a, -0.1)
            b = P(cu0 + side * (s["eye_w"] + 0.15), eye_v + dv_b, -0.2)
            left, right = (b, a) if side < 0 else (a, b)
            creases.append((_stroke(left, right, 0.0, np.maximum(0.008, 0.5 * px)), 0.25 * np.clip(CR - 0.3, 0, 1)))
        g["eye_creases"].append(creases)
    # glabella lines (brow lowering: deep vertical furrows, drawn wide enough to survive 48 px) and bunny lines (nose
    # wrinkle)
    mid_v = eye_v - s["brow_gap"] + 0.08 * BL
    for side in (-1.0, 1.0):
        a, b = P(side * 0.035, mid_v - 0.05, 0.05), P(side * 0.045, mid_v + 0.07, 0.06)
        g["mid_creases"].append((_stroke(a, b, 0.0, np.maximum(0.025, 0.6 * px)), 0.6 * np.clip(BL, 0, 1)))
        a, b = P(side * 0.02, eye_v + 0.07, 0.12), P(side * 0.13, eye_v + 0.11, 0.08)
        g["mid_creases"].append((_stroke(a, b, 0.0, np.maximum(0.014, 0.6 * px)), 0.7 * np.clip(NW, 0, 1)))
        a, b = P(side * 0.03, eye_v + 0.13, 0.14), P(side * 0.12, eye_v + 0.165, 0.1)
        g["mid_creases"].append((_stroke(a, b, 0.0, np.maximum(0.012, 0.6 * px)), 0.6 * np.clip(NW, 0, 1)))
        a, b = P(side * 0.04, eye_v + 0.19, 0.16), P(side * 0.1, eye_v + 0.22, 0.12)
        g["mid_creases"].append((_stroke(a, b, 0.0, np.maximum(0.01, 0.5 * px)), 0.5 * np.clip(NW, 0, 1)))
    # forehead lines (brow raise, inner brow raise)
    top = eye_v - s["brow_gap"] - 0.1 * BR - 0.05
    g["forehead"] = []
    for k in range(3):
        vk = top - 0.1 - 0.075 * k
        half = 0.32 - 0.04 * k
        a, b = P(-half * np.ones_like(vk), vk, 0.0), P(half * np.ones_like(vk), vk, 0.0)
        g["forehead"].append(_stroke(a, b, -0.025 * fy, np.maximum(0.009, 0.5 * px)))
    g["forehead_amt"] = np.clip(0.9 * BR + 0.3 * BI - 0.6 * BL, 0, 1)
    # nose: the tip is the landmark; nostrils and alae hang below/beside it
    nose_v = eye_v + s["nose_v"] - 0.03 * NW
    nw = s["nose_w"] * (1 + 0.25 * NW)
    g["nose"] = P(np.zeros_like(nose_v), nose_v, s["nose_p"])
    fxn = np.maximum(P.cy, 0.15)
    g["nostrils"] = [P(side * nw * 0.75, nose_v + 0.045, 0.5 * s["nose_p"]) for side in (-1.0, 1.0)]
    g["nostril_a"], g["nostril_b"] = 0.033 * (1 + 0.2 * NW) * fxn, 0.019 * fy
    g["alae"] = []
    g["nose_lines"] = []
    for side in (-1.0, 1.0):
        a = P(side * nw * 1.45, nose_v - 0.015, 0.35 * s["nose_p"])
        b = P(side * nw * 0.45, nose_v + 0.075, 0.55 * s["nose_p"])
        left, right = (a, b) if side < 0 else (b, a)
        g["alae"].append(_stroke(left, right, 0.025 * fy, np.maximum(0.011, 0.55 * px)))
        a = P(side * 0.045, eye_v + 0.13, 0.3 * s["nose_p"])
        b = P(side * nw * 0.9, nose_v - 0.06, 0.75 * s["nose_p"])
        vis = 0.22 + 0.78 * np.clip(side * sy * 2.5, 0, 1)
        g["nose_lines"].append((_stroke(a, b, 0.0, np.maximum(0.01, 0.5 * px)), vis))
    # mouth: the corners are the landmarks; lips and lip line end exactly there
    mouth_v = nose_v + s["mouth_v"]
    mw = s["mouth_w"] * np.clip(1 + 0.36 * LP + 0.45 * LS - 0.15 * PR - 0.12 * JD + 0.04 * LD, 0.6, None)
    corner_v = mouth_v - 0.24 * LP + 0.13 * LD + 0.08 * LS + 0.05 * JD - 0.02 * UL
    centre_v = mouth_v + 0.03 * LP + 0.03 * JD - 0.03 * UL - 0.05 * CH
    ml = P(-mw, corner_v, 0.02)
    mr = P(mw, corner_v, 0.02)
    mc = P(np.zeros_like(mw), centre_v, 0.07)
    g["mouth_l"], g["mouth_r"] = ml, mr
    st = _stroke(ml, mr, 0.0, np.maximum(0.015, 0.75 * px))
    # the middle's offset from the chord along the normal (-cv, cu): positive = below the corners (smile)
    st["bulge"] = -(mc[0] - st["mu"]) * st["cv"] + (mc[1] - st["mv"]) * st["cu"]
    g["mouth"] = st
    g["open_up"] = (0.035 * JD + 0.1 * UL + 0.05 * LP + 0.025 * LS) * fy
    g["open_lo"] = (0.22 * JD + 0.09 * LP + 0.08 * LS + 0.01 * UL + 0.12 * LL) * fy
    thin = np.clip(1 - 0.75 * PR - 0.3 * LS - 0.35 * LP - 0.2 * JD, 0.15, None)
    g["teeth_up"] = (0.03 + 0.13 * LP + 0.1 * UL) * fy       # upper teeth under the upper lip (AU12, AU10)
    g["teeth_lo"] = (0.06 * LS + 0.03 * LD + 0.07 * LL) * fy  # lower teeth over the lower lip (AU20, AU16)
    g["lip_u"], g["lip_l"] = s["lip_u"] * thin * fy, s["lip_l"] * thin * (1 + 0.3 * CH + 0.3 * LL) * fy
    # how square the open mouth is: lips stretched sideways (AU20) and an upper lip raised by AU10 pull the opening
    # into a flat-topped rectangle (fear, disgust) instead of the oval of a dropped jaw
    g["mouth_sq"] = np.clip(0.7 * LS + 0.6 * UL + 0.5 * LL - 0.3 * LP, 0.0, 1.0)
    # nasolabial folds
    g["folds"] = []
    amt = np.clip(0.8 * LP + 0.7 * NW + 0.6 * UL + 0.3 * CR + 0.15, 0, 1)
    for side in (-1.0, 1.0):
        a = P(side * nw * 1.7, nose_v - 0.02, 0.1)
        # ends beside the mouth corner; the deeper fold of a smile or a sneer runs on below the corner's level
        deep = np.clip((LP + NW + UL - 0.3) / 0.5, 0, 1)
        b = P(side * (mw + 0.12 - 0.04 * deep), corner_v - 0.02 + 0.09 * deep, 0.0)
        left, right = (a, b) if side < 0 else (b, a)
        g["folds"].append((_stroke(left, right, 0.035 * np.ones_like(amt), np.maximum(_FOLD_WIDTH, 0.5 * px)), amt))
    # relief (see _shade_head): (u, v, half width, half height, relative brightness change) per bump
    relief = []
    for side, e in zip((-1.0, 1.0), g["eyes"]):
        # the eye socket, deeper under lowered brows; the cheek's apple, lifted and rounder under AU6
        relief.append((e["u"], e["v"] - 0.03 + 0.03 * BL, e["w"] * 1.7 + 0.02, 0.17 * fy, -0.26 - 0.15 * BL))
        cu_, cv_ = P(side * 0.5, eye_v + 0.4 - 0.1 * CR, 0.0)
        relief.append((cu_, cv_, 0.26 * P.fx(side * 0.5), 0.18 - 0.03 * CR, 0.04 + 0.07 * CR))
        # AU9 pulls the skin beside the nose up: a furrow down each side of the bridge and one under the lower lid
        fu_, fv_ = P(side * 0.16, eye_v + 0.2, 0.2)
        relief.append((fu_, fv_, 0.08 * P.fx(side * 0.16), 0.15 * fy, -0.3 * NW))
        ou_, ov_ = P(side * s["eye_d"], eye_v + e["lo"] / fy + 0.1, -0.05)
        relief.append((ou_, ov_, 0.2 * P.fx(side * s["eye_d"]), 0.045 * fy, -0.22 * NW - 0.06 * CR))
    nu_, nv_ = g["nose"]
    relief.append((nu_, nv_ + 0.13, nw * 1.7, 0.05 * fy, -0.1 * np.ones_like(nu_)))           # shadow under the nose
    bu_, bv_ = P(np.zeros_like(nose_v), eye_v + 0.24, 0.5 * s["nose_p"])
    relief.append((bu_, bv_, 0.07 * fxn, 0.28 * fy, 0.05 * np.ones_like(bu_)))                  # the nose bridge
    relief.append((nu_ - 0.1 * sy, nv_ - 0.02, nw * 1.2, 0.12 * fy, 0.05 * np.ones_like(nu_)))  # its tip
    chin_u, chin_v = P(np.zeros_like(mouth_v), mouth_v + 0.2 + 0.2 * JD, 0.0)
    relief.append((mc[0], mc[1] + g["open_lo"] + s["lip_l"] + 0.07, mw * 0.55, 0.045 * fy,
                   -0.18 - 0.15 * CH - 0.1 * LL))                                                 # under the lower lip
    relief.append((chin_u, chin_v + 0.1 - 0.05 * CH, 0.3, 0.14 * fy, 0.06 + 0.08 * CH))          # the chin
    n_faces = len(sy)
    g["relief"] = [tuple(np.broadcast_to(np.asarray(x, np.float64), (n_faces,)).copy() for x in bump)
                   for bump in relief]
    # occluders
    g["occluder"] = s["occluder"]
    op = s["occ_pos"]
    targets = np.stack([mc[0], (ml[0] + mr[0]) / 2 - 0.5, (ml[0] + mr[0]) / 2 + 0.5, mc[0]], 1)
    vt = np.stack([mc[1], mc[1] - 0.15, mc[1] - 0.15, mc[1] + 0.3], 1)
    pick = np.minimum((op[:, 0] * 4).astype(int), 3)
    g["hand_u"] = targets[np.arange(len(pick)), pick] + 0.15 * (op[:, 1] - 0.5)
    g["hand_v"] = vt[np.arange(len(pick)), pick] + 0.15 * (op[:, 2] - 0.5)
    ang = np.pi * (op[:, 3] - 0.5) * 0.8
    g["hand_cos"], g["hand_sin"] = np.cos(ang), np.sin(ang)
    g["glasses_t"] = 0.05 + 0.15 * op[:, 1]
    for key in ("skin", "hair", "brow_c", "iris_c", "lip_c", "cloth"):
        g[key] = s[key]
    return g


def landmarks_of(g: Mapping[str, Any]) -> np.ndarray:
    """The five landmarks ``[N, 5, 2]`` (pixel x, y) of a :func:`face_geometry` result."""
    pts = [(g["eyes"][0]["u"], g["eyes"][0]["v"]), (g["eyes"][1]["u"], g["eyes"][1]["v"]), g["nose"],
           g["mouth_l"], g["mouth_r"]]
    u = np.stack([p[0] for p in pts], 1)
    v = np.stack([p[1] for p in pts], 1)
    R, c, s_ = g["R"][:, None], g["cos"][:, None], g["sin"][:, None]
    x = g["cx"][:, None] + R * (u * c - v * s_)
    y = g["cy"][:, None] + R * (u * s_ + v * c)
    return np.stack([x, y], -1)


# ---------------------------------------------------------------------------------------------------------
# Rendering (torch, vectorised over a chunk)
# ---------------------------------------------------------------------------------------------------------
#
# A fresh image-sized tensor costs an order of magnitude more to allocate (page faults) than one arithmetic
# pass over it, so every pixel-sized temporary lives in a named buffer of a workspace that is reused across
# chunks, and the arithmetic runs in place or into ``out=`` buffers. Distances are in face units; ``k`` is the
# number of pixels per face unit.

class _Workspace:
    """Named flat buffers, reused across chunks and viewed to any shape that fits."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._store.get((name, dtype))
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=dtype)
            self._store[(name, dtype)] = buf
        return buf[:n].view(shape)


_TLS = threading.local()  # per-thread cache of per-face arrays already converted to tensors (see render)


def _t(a: Any, sl: slice) -> torch.Tensor:
    """Chunk of a per-face array as a float32 tensor shaped [B, 1, 1]."""
    cache = getattr(_TLS, "cache", None)
    if cache is not None:
        hit = cache.get(id(a))
        if hit is not None and hit[0] is a:
            return hit[1][torch.from_numpy(sl)] if isinstance(sl, np.ndarray) else hit[1][sl]
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float64)[sl], np.float32)).view(-1, 1, 1)


def _tensor_cache(n: int, *trees: Any) -> dict[int, tuple[np.ndarray, torch.Tensor]]:
    """Every 1-D length-n array in nested dicts/lists/tuples, converted once to a float32 [n, 1, 1] tensor."""
    cache: dict[int, tuple[np.ndarray, torch.Tensor]] = {}
    stack = list(trees)
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, np.ndarray) and x.ndim == 1 and len(x) == n and x.dtype != object:
            cache[id(x)] = (x, torch.from_numpy(np.ascontiguousarray(x, np.float32)).view(n, 1, 1))
    return cache


def _stroke_t(st: Mapping[str, np.ndarray], sl: slice) -> dict[str, torch.Tensor]:
    return {k: _t(v, sl) for k, v in st.items()}


class _Canvas:
    """Pixels to draw on (``img`` [B, C, h, w]) with their face-frame coordinates ``u``, ``v`` [B, h, w]."""

    def __init__(self, ws: _Workspace, img: torch.Tensor, u: torch.Tensor, v: torch.Tensor, k: torch.Tensor):
        self.ws, self.img, self.u, self.v, self.k = ws, img, u, v, k

    def buf(self, name: str) -> torch.Tensor:
        return self.ws(name, tuple(self.u.shape))


class _Window(_Canvas):
    """A per-face window of the image (one size for the chunk), gathered now and scattered back by commit.

    ``rows`` (chunk rows) restricts it to some faces of the chunk; ``box`` and ``frame`` then hold only those.
    """

    def __init__(self, ws: _Workspace, img: torch.Tensor, box: tuple[np.ndarray, ...], frame: Mapping[str, Any],
                 rows: np.ndarray | None = None):
        B, C, H, W = img.shape
        x_lo, x_hi = np.clip(box[0], 0, W), np.clip(box[1], 0, W)  # only the part inside the image matters
        y_lo, y_hi = np.clip(box[2], 0, H), np.clip(box[3], 0, H)
        pw = int(min(W, math.ceil(float(np.max(x_hi - x_lo))) + 3))
        ph = int(min(H, math.ceil(float(np.max(y_hi - y_lo))) + 3))
        x0 = torch.from_numpy(np.clip(np.floor(x_lo).astype(np.int64) - 1, 0, W - pw)).view(-1, 1, 1)
        y0 = torch.from_numpy(np.clip(np.floor(y_lo).astype(np.int64) - 1, 0, H - ph)).view(-1, 1, 1)
        cols = x0 + torch.arange(pw).view(1, 1, pw)
        rws = y0 + torch.arange(ph).view(1, ph, 1)
        n = len(x0)
        pix = torch.add(rws * W, cols, out=ws("win_idx", (n, ph, pw), torch.int64)).view(n, 1, ph * pw)
        self.full = img
        if rows is None:
            self.index = pix.expand(n, C, ph * pw)
            patch = torch.gather(img.view(B, C, H * W), 2, self.index, out=ws("win_patch", (n, C, ph * pw)))
        else:  # flat indices over the whole chunk
            base = torch.from_numpy(np.asarray(rows, np.int64) * (C * H * W)).view(n, 1, 1)
            self.index = (pix + base + torch.arange(C).view(1, C, 1) * (H * W)).view(-1)
            patch = torch.gather(img.view(-1), 0, self.index, out=ws("win_patch", (n * C * ph * pw,)))
        self.rows = rows
        X = cols.float().add_(0.5).sub_(frame["cx"])
        Y = rws.float().add_(0.5).sub_(frame["cy"])
        u = torch.add(X * frame["cu"], Y * frame["su"], out=ws("win_u", (n, ph, pw)))
        v = torch.sub(Y * frame["cu"], X * frame["su"], out=ws("win_v", (n, ph, pw)))
        super().__init__(ws, patch.view(n, C, ph, pw), u, v, frame["k"])

    def commit(self) -> None:
        B, C, H, W = self.full.shape
        if self.rows is None:
            self.full.view(B, C, H * W).scatter_(2, self.index, self.img.reshape(B, C, -1))
        else:
            self.full.view(-1).scatter_(0, self.index, self.img.reshape(-1))


def _bbox(g: Mapping[str, Any], sl: slice, pts_u: list, pts_v: list, margin: float) -> tuple[np.ndarray, ...]:
    """Pixel bounding box of face-frame points (each [N]) grown by ``margin`` face units, after roll."""
    u = np.stack([np.broadcast_to(np.asarray(p, np.float64), g["R"].shape)[sl] for p in pts_u], 1)
    v = np.stack([np.broadcast_to(np.asarray(p, np.float64), g["R"].shape)[sl] for p in pts_v], 1)
    u_lo, u_hi = u.min(1) - margin, u.max(1) + margin
    v_lo, v_hi = v.min(1) - margin, v.max(1) + margin
    R, c, s_ = g["R"][sl], g["cos"][sl], g["sin"][sl]
    xs, ys = [], []
    for uu in (u_lo, u_hi):
        for vv in (v_lo, v_hi):
            xs.append(g["cx"][sl] + R * (uu * c - vv * s_))
            ys.append(g["cy"][sl] + R * (uu * s_ + vv * c))
    xs, ys = np.stack(xs, 1), np.stack(ys, 1)
    return xs.min(1) - 1.5, xs.max(1) + 1.5, ys.min(1) - 1.5, ys.max(1) + 1.5


# --- primitives (all write into workspace buffers; the returned tensor is the named buffer) ------------

def _alpha(d: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Coverage from a distance (in place): 1 inside, 0 outside, a one-pixel ramp across the edge."""
    return d.mul_(-k).add_(0.5).clamp_(0.0, 1.0)


def _over(img: torch.Tensor, a: torch.Tensor, col: torch.Tensor) -> None:
    """img <- img + a * (col - img), in place; a [B, h, w], col [B|1, C, 1, 1]."""
    img.lerp_(col.expand(img.shape), a.unsqueeze(1).expand(img.shape))


def _darken(img: torch.Tensor, a: torch.Tensor) -> None:
    """img <- img * (1 - a), in place (a is consumed)."""
    img.mul_(a.mul_(-1.0).add_(1.0).unsqueeze(1))


def _ellipse(cv: _Canvas, cu, cvv, a, b, out: str = "e0", tmp: str = "e1") -> torch.Tensor:
    """Approximate signed distance to an axis-aligned ellipse centred at (cu, cvv) with half axes a, b."""
    x = torch.sub(cv.u, cu, out=cv.buf(out)).mul_(1.0 / a)
    x.mul_(x)
    y = torch.sub(cv.v, cvv, out=cv.buf(tmp)).mul_(1.0 / b)
    return x.addcmul_(y, y).sqrt_().sub_(1.0).mul_(torch.minimum(a, b))


def _chord(cv: _Canvas, st, s_out: str, w_out: str, tmp: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Position along a stroke's chord (s, -1..1 between the ends) and across it (w, face units)."""
    du = torch.sub(cv.u, st["mu"], out=cv.buf(tmp))
    s = torch.mul(du, st["cu"] / st["L"], out=cv.buf(s_out))
    w = torch.sub(cv.v, st["mv"], out=cv.buf(w_out))
    s.addcmul_(w, st["cv"] / st["L"])
    w.mul_(st["cu"]).addcmul_(du, st["cv"], value=-1.0)
    return s, w


def _stroke_d(cv: _Canvas, st, out: str = "st_d") -> torch.Tensor:
    """Distance to a curved stroke with tapered thickness and flat ends exactly at its two end points."""
    s, w = _chord(cv, st, "st_s", out, "st_t")
    g = torch.mul(s, s, out=cv.buf("st_t")).sub_(1.0).mul_(st["bulge"])
    w.add_(g).abs_()
    t = torch.mul(s, (st["t1"] - st["t0"]) * 0.5, out=cv.buf("st_t")).add_((st["t0"] + st["t1"]) * 0.5)
    w.sub_(t)
    return torch.maximum(w, s.abs_().sub_(1.0).mul_(st["L"]), out=w)


def _crease_layer(cv: _Canvas, items: list, sl: slice, soft: float = 0.0) -> torch.Tensor | None:
    """Union (max) of stroke coverages, each scaled by its per-face strength; None if all are ~0. ``soft`` > 0
    widens each edge's ramp to that many face units (a shadow that fades out instead of a drawn line)."""
    acc = None
    k = cv.k if soft <= 0 else torch.clamp(cv.k, max=1.0 / soft)
    for st, amt in items:
        amt = np.asarray(amt, np.float64)
        amt = np.full(sl.stop - sl.start, float(amt)) if amt.ndim == 0 else amt[sl]
        if float(np.max(amt)) <= 0.01:
            continue
        a = _alpha(_stroke_d(cv, _stroke_t(st, sl)), k).mul_(_t(amt, slice(None)))
        if acc is None:
            acc = cv.buf("crease").copy_(a)
        else:
            torch.maximum(acc, a, out=acc)
    return acc


# --- feature groups ----------------------------------------------------------------------------------------

def _stroke_pts(st: Mapping[str, np.ndarray], extra: Any = 0.0) -> tuple[list, list]:
    """Face-frame points whose bounding box holds a stroke (its ends grown by bulge and thickness)."""
    e = np.abs(st["bulge"]) + np.maximum(st["t0"], st["t1"]) + extra
    ends = [(st["mu"] + sgn * st["L"] * st["cu"], st["mv"] + sgn * st["L"] * st["cv"]) for sgn in (-1, 1)]
    return [p - e for p, _ in ends] + [p + e for p, _ in ends], [q - e for _, q in ends] + [q + e for _, q in ends]


def _draw_eye(cv: _Canvas, e: Mapping[str, np.ndarray], sl: slice, colors: Mapping[str, torch.Tensor]) -> None:
    """Sclera almond, iris and pupil clipped by the lids, and the lash line; the iris centre is the landmark."""
    img, k = cv.img, cv.k
    eu, ev = _t(e["u"], sl), _t(e["v"], sl)
    up, lo, w = _t(e["up"], sl), _t(e["lo"], sl), _t(e["w"], sl)
    s = torch.sub(cv.u, eu, out=cv.buf("eye_s")).mul_(1.0 / w)
    dv = torch.sub(cv.v, ev, out=cv.buf("eye_dv"))
    gg = torch.mul(s, s, out=cv.buf("eye_g")).neg_().add_(1.0).clamp_(min=0.0)
    end = torch.abs(s, out=cv.buf("eye_end")).sub_(1.0).mul_(w)
    # almond between the upper lid (dv = -up * g) and the lower lid (dv = +lo * g)
    d = torch.mul(gg, (lo - up) * 0.5, out=cv.buf("eye_d")).sub_(dv).abs_()
    d.addcmul_(gg, (lo + up) * 0.5, value=-1.0)
    a_eye = _alpha(torch.maximum(d, end, out=d), k)
    _over(img, a_eye, colors["sclera"])
    ir_u, ir_v = _t(e["ir_u"], sl), _t(e["ir_v"], sl)
    _over(img, _alpha(_ellipse(cv, eu, ev, ir_u, ir_v), k).mul_(a_eye), colors["iris"])
    _over(img, _alpha(_ellipse(cv, eu, ev, ir_u * 0.5, ir_v * 0.5), k).mul_(a_eye), colors["pupil"])
    # the light's reflection on the cornea, up and towards the light, a little inside the pupil's edge
    cl = _alpha(_ellipse(cv, eu - ir_u * 0.3, ev - ir_v * 0.35, ir_u * 0.22, ir_v * 0.22), k).mul_(a_eye)
    _over(img, cl.mul_(0.85), colors["sclera"])
    # lash line along the upper lid, thicker in the middle, flat ends at the eye corners
    lash = _t(e["lash"], sl)
    dl = torch.mul(gg, up, out=cv.buf("e0")).add_(dv).abs_()
    dl.sub_(torch.mul(gg, lash * 0.8, out=cv.buf("e1")).add_(lash * 0.6))
    _over(img, _alpha(torch.maximum(dl, end, out=dl), k), colors["lash"])


def _draw_mouth(cv: _Canvas, g: Mapping[str, Any], sl: slice, colors: Mapping[str, torch.Tensor]) -> None:
    """Lips, the open mouth with upper teeth, and the lip line; all end exactly at the two corners."""
    img, k = cv.img, cv.k
    st = _stroke_t(g["mouth"], sl)
    s, w = _chord(cv, st, "m_s", "m_w", "m_t")
    gg = torch.mul(s, s, out=cv.buf("m_g")).neg_().add_(1.0).clamp_(min=0.0)
    h = torch.sqrt(gg, out=cv.buf("m_h")).add_(gg).mul_(0.5)  # roundish profile that still ends at the corners
    if float(np.max(g["mouth_sq"][sl])) > 0.01:                # squarer: towards gg ** 0.25, flat in the middle
        sq = _t(g["mouth_sq"], sl)
        h.lerp_(torch.sqrt(torch.sqrt(gg, out=cv.buf("m_q")), out=cv.buf("m_q")), sq)
    w.addcmul_(gg, st["bulge"], value=-1.0)                    # w relative to the curved lip line
    end = torch.abs(s, out=cv.buf("m_t")).sub_(1.0).mul_(st["L"])
    o_up, o_lo = _t(g["open_up"], sl), _t(g["open_lo"], sl)
    l_up, l_lo = _t(g["lip_u"], sl), _t(g["lip_l"], sl)
    d = torch.mul(h, (o_lo + l_lo - o_up - l_up) * 0.5, out=cv.buf("m_d")).sub_(w).abs_()
    d.addcmul_(h, (o_lo + l_lo + o_up + l_up) * 0.5, value=-1.0)
    _over(img, _alpha(torch.maximum(d, end, out=d), k), colors["lips"])
    line_vis: torch.Tensor | float = 0.9
    if float(np.max(g["open_up"][sl] + g["open_lo"][sl])) > 0.01:
        d = torch.mul(h, (o_lo - o_up) * 0.5, out=cv.buf("m_d")).sub_(w).abs_()
        d.addcmul_(h, (o_lo + o_up) * 0.5, value=-1.0)
        a_in = _alpha(torch.maximum(d, end, out=d), k)
        _over(img, a_in, colors["mouth"])
        dt = torch.mul(h, o_up, out=cv.buf("m_g")).add_(w).sub_(_t(g["teeth_up"], sl))  # upper teeth
        _over(img, _alpha(dt, k).mul_(a_in), colors["teeth"])
        if float(np.max(g["teeth_lo"][sl])) > 0.005:                                     # lower teeth
            dt = torch.mul(h, o_lo, out=cv.buf("m_g")).sub_(_t(g["teeth_lo"], sl)).sub_(w)
            _over(img, _alpha(dt, k).mul_(a_in), colors["teeth"] * 0.92)
        line_vis = a_in.mul_(-0.9).add_(0.9)
    dl = w.abs_().sub_(st["t0"])
    a = _alpha(torch.maximum(dl, end, out=dl), k)
    _over(img, a.mul_(line_vis), colors["lip_line"])


def _crease_window(ws: _Workspace, img: torch.Tensor, frame: Mapping[str, Any], g: Mapping[str, Any], sl: slice,
                   items: list, soft: float = 0.0) -> None:
    """Darken along strokes (skin folds) in one window; skipped when no face of the chunk shows them."""
    if all(float(np.max(np.asarray(amt)[sl])) <= 0.01 for _, amt in items):
        return
    pu, pv = [], []
    for st, _ in items:
        a, b = _stroke_pts(st)
        pu += a
        pv += b
    win = _Window(ws, img, _bbox(g, sl, pu, pv, 0.02 + soft), frame)
    crease = _crease_layer(win, items, sl, soft)
    if crease is not None:
        _darken(win.img, crease)
    win.commit()


def _draw_clutter(ws: _Workspace, img: torch.Tensor, s: Mapping[str, np.ndarray], sl: slice, clutter: float,
                  col) -> None:
    """Blend a busy background into ``img``: a colour gradient plus separable "plaid" terms (rectangles)."""
    B, C, H, W = img.shape
    img.mul_(1.0 - clutter)
    base = col(s["bg_plain"]) * clutter
    grad = s["clutter_grad"][sl]
    xs = (np.arange(W) + 0.5) / W
    ys = (np.arange(H) + 0.5) / H

    def colour(a: np.ndarray) -> torch.Tensor:
        a = a if C == 3 else a @ _LUMA[:, None]
        return torch.from_numpy(np.ascontiguousarray(a, np.float32)).view(B, C, 1, 1)

    img.add_(base)
    img.add_(colour(grad[:, 0] * 0.3 * clutter) * torch.from_numpy((xs - 0.5).astype(np.float32)).view(1, 1, 1, W))
    img.add_(colour(grad[:, 1] * 0.3 * clutter) * torch.from_numpy((ys - 0.5).astype(np.float32)).view(1, 1, H, 1))
    steps, levels = s["clutter_steps"][sl], s["clutter_levels"][sl]
    cols = s["clutter_col"][sl]
    term = ws("clutter", (B, 1, H, W))
    for t in range(_CLUTTER_TERMS):
        prof = []
        for axis, pos in ((0, xs), (1, ys)):
            idx = (pos[None, None, :] > steps[:, t, axis, :, None]).sum(1)          # [B, len(pos)]
            prof.append(np.take_along_axis(levels[:, t, axis], idx, 1) - 0.5)
        px = torch.from_numpy(prof[0].astype(np.float32)).view(B, 1, 1, W)
        py = torch.from_numpy(prof[1].astype(np.float32)).view(B, 1, H, 1)
        torch.mul(py, px, out=term)
        img.addcmul_(term.expand(B, C, H, W), colour(cols[:, t] * clutter).expand(B, C, 1, 1))


def _box_blur(ws: _Workspace, x: torch.Tensor, name: str) -> torch.Tensor:
    """3x3 mean over the pixels inside the image (shifted sums into buffers: deterministic, no allocation)."""
    H, W = x.shape[-2:]
    h = ws(name + "_h", tuple(x.shape))
    torch.add(x[..., :, :-1], x[..., :, 1:], out=h[..., :, 1:])        # h[j] = x[j-1] + x[j]
    torch.mul(h[..., :, 1], 1.5, out=h[..., :, 0])                       # edges: mean of the two inside
    h[..., :, W - 1].mul_(1.5)
    h[..., :, 1:-1].add_(x[..., :, 2:])                                  # + x[j+1]
    o = ws(name, tuple(x.shape))
    torch.add(h[..., :-1, :], h[..., 1:, :], out=o[..., 1:, :])
    torch.mul(o[..., 1, :], 1.5, out=o[..., 0, :])
    o[..., H - 1, :].mul_(1.5)
    o[..., 1:-1, :].add_(h[..., 2:, :])
    return o.mul_(1.0 / 9.0)


_AMBIENT = 0.40  # share of the skin's light that does not depend on the surface's orientation
_HAIR_STRANDS = 0.08  # std of the hair's strand texture, relative to its colour
_HAIRLINE_SHARPNESS = 20.0  # 1 / width of the hairline's ramp in face units
_EXPOSURE = 0.9  # the head's brightness facing the camera, relative to its flat colour (room for highlights)
_SKIN_TEXTURE = 0.12  # amplitude of the blurred byte field on the skin (about 1.2 % brightness std)


def _shade_head(ws: _Workspace, cv: _Canvas, img: torch.Tensor, s: Mapping[str, np.ndarray], g: Mapping[str, Any],
                sl: slice, a_head: torch.Tensor, hx: torch.Tensor, hy: torch.Tensor, r2: torch.Tensor,
                noise_rng: np.random.Generator) -> None:
    """Shade the head as a lit 3D surface: Lambert on the head ellipsoid (normal ``(hx, hy, sqrt(1 - r2))``)
    under a light from the front, slightly above and towards the domain's light direction, times the relief of
    the face (:func:`face_geometry`'s ``relief``: eye sockets, nose, cheeks, lips, chin; soft bumps that brighten
    or darken), times a faint skin texture (random bytes from ``noise_rng``, box-blurred twice: blotches a few
    pixels wide, about 1.2 % of the brightness). Only the head's coverage ``a_head`` is shaded (features and fringe
    drawn on it included)."""
    # the light's unit direction per face, in numpy (transcendental functions stay off tensors: see render)
    lx = s["light_dir"][:, 0] * s["light"] * 1.6
    ly = s["light_dir"][:, 1] * s["light"] * 1.6 - 0.35
    inv = 1.0 / np.sqrt(lx * lx + ly * ly + 1.0)
    lam = torch.neg(r2, out=cv.buf("sh_l")).add_(1.0).clamp_(min=0.0).sqrt_()
    lam.mul_(_t(inv, sl)).addcmul_(hx, _t(lx * inv, sl)).addcmul_(hy, _t(ly * inv, sl)).clamp_(min=0.0)
    shade = lam.mul_(1.0 - _AMBIENT).add_(_AMBIENT).mul_(_t(_EXPOSURE / (_AMBIENT + (1.0 - _AMBIENT) * inv), sl))
    bump = cv.buf("sh_b")
    tmp = cv.buf("sh_t")
    for cu, cvv, a, b, amt in g["relief"]:
        amt_sl = np.asarray(amt)[sl]
        if float(np.max(np.abs(amt_sl))) <= 0.005:
            continue
        x = torch.sub(cv.u, _t(cu, sl), out=bump).mul_(1.0 / _t(a, sl))
        x.mul_(x)
        y = torch.sub(cv.v, _t(cvv, sl), out=tmp).mul_(1.0 / _t(b, sl))
        q = x.addcmul_(y, y).neg_().add_(1.0).clamp_(min=0.0)
        shade.addcmul_(q.mul_(q), shade * _t(amt, sl))
    B, H, W = shade.shape
    raw = torch.from_numpy(noise_rng.integers(0, 256, (B, 1, H, W), dtype=np.uint8))
    tex = _box_blur(ws, _box_blur(ws, ws("skin_raw", (B, 1, H, W)).copy_(raw), "skin1"), "skin2")
    shade.mul_(tex.view(B, H, W).sub_(127.5).mul_(_SKIN_TEXTURE / 127.5).add_(1.0))
    shade.sub_(1.0).mul_(a_head).add_(1.0)
    img.mul_(shade.unsqueeze(1))


def _render_chunk(ws: _Workspace, s: Mapping[str, np.ndarray], g: Mapping[str, Any], sl: slice, size: int,
                  color: bool, clutter: float, noise_rng: np.random.Generator) -> torch.Tensor:
    """Float image ``[B, C, size, size]`` (0..1, C = 3 or 1 for grey) of the faces in ``sl``."""
    B = sl.stop - sl.start
    H = W = size
    C = 3 if color else 1

    def col(rgb: Any) -> torch.Tensor:
        """Per-face ``[N, 3]`` or constant ``(3,)`` colours as ``[B|1, C, 1, 1]`` (luminance when grey)."""
        a = np.asarray(rgb, np.float64)
        a = a[sl] if a.ndim == 2 else a[None]
        if not color:
            a = a @ _LUMA[:, None]
        return torch.from_numpy(np.ascontiguousarray(a, np.float32)).view(len(a), C, 1, 1)

    R = _t(g["R"], sl)
    k = R
    cx, cy = _t(g["cx"], sl), _t(g["cy"], sl)
    frame = {"cx": cx, "cy": cy, "cu": _t(g["cos"], sl) / R, "su": _t(g["sin"], sl) / R, "k": k}
    X = torch.arange(W, dtype=torch.float32).view(1, 1, W).add(0.5).sub(cx)
    Y = torch.arange(H, dtype=torch.float32).view(1, H, 1).add(0.5).sub(cy)
    u = torch.add(X * frame["cu"], Y * frame["su"], out=ws("u", (B, H, W)))
    v = torch.sub(Y * frame["cu"], X * frame["su"], out=ws("v", (B, H, W)))
    img = ws("img", (B, C, H, W))
    full = _Canvas(ws, img, u, v, k)
    ones = torch.ones_like(R)

    # background: a plain backdrop with a vertical gradient, mixed with clutter
    ramp = torch.arange(H, dtype=torch.float32).view(1, 1, H, 1) / H - 0.5
    img.copy_((col(s["bg_plain"]) * (1.0 + _t(s["bg_grad"], sl).unsqueeze(1) * 0.3 * ramp)).expand(B, C, H, W))
    if clutter > 0:
        _draw_clutter(ws, img, s, sl, clutter, col)

    skin, hair_c = col(g["skin"]), col(g["hair"])
    head_u = g["head_u"]
    # clothes (in a window along the bottom) and neck (in a window under the chin)
    z = np.zeros_like(g["R"])
    top = g["fh_lo"] + 0.18
    win = _Window(ws, img, _bbox(g, sl, [z - 1.6, z + 1.6], [top, top + 1.6], 0.02), frame)
    d = _ellipse(win, _t(head_u * 0.5, sl), _t(g["fh_lo"] + 0.95, sl), ones * 1.55, ones * 0.75)
    _over(win.img, _alpha(d, k), col(g["cloth"]))
    win.commit()
    win = _Window(ws, img, _bbox(g, sl, [head_u * 0.6 - 0.45, head_u * 0.6 + 0.45], [z + 0.73, top + 1.6], 0.02),
                  frame)
    d = torch.sub(win.u, _t(head_u * 0.6, sl), out=win.buf("t0")).abs_().sub_(0.43)
    torch.maximum(d, torch.neg(win.v, out=win.buf("t1")).add_(0.75), out=d)
    _over(win.img, _alpha(d, k), skin * 0.8)
    win.commit()
    # hair behind the head, in strands: random bytes averaged along the vertical (streaks a tenth of the image long,
    # a pixel wide), a standard deviation of _HAIR_STRANDS of the hair's colour
    hair_amt = _t(g["hair_amt"], sl)
    kv = max(3, (H // 10) | 1)
    raw = torch.from_numpy(noise_rng.integers(0, 256, (B, 1, H, W), dtype=np.uint8))
    strands = F.avg_pool2d(ws("hair_raw", (B, 1, H, W)).copy_(raw), (kv, 1), stride=1, padding=(kv // 2, 0),
                           count_include_pad=False)
    hair_c = strands.sub_(127.5).mul_(_HAIR_STRANDS / 73.9 * math.sqrt(kv)).add_(1.0) * hair_c
    d_hair = _ellipse(full, _t(g["hair_u"], sl), ones * -0.12, _t(g["hair_a"], sl), _t(g["hair_b"], sl),
                      out="hair_d", tmp="t1")
    # ... cut at the hair length, and by a round notch under the head (long hair falls at the sides only)
    d = torch.sub(v, _t(g["hair_len"], sl), out=full.buf("t0"))
    torch.maximum(d, d_hair, out=d)
    notch = _ellipse(full, _t(g["hair_u"], sl), ones * 1.35, ones * 0.75, ones * 0.8, out="t2", tmp="t3")
    torch.maximum(d, notch.neg_(), out=d)
    _over(img, _alpha(d, k).mul_(hair_amt), hair_c)
    # ears, each in its own window
    for eu, ev in g["ears"]:
        win = _Window(ws, img, _bbox(g, sl, [eu - g["ear_a"], eu + g["ear_a"]], [ev - 0.17, ev + 0.17], 0.02),
                      frame)
        _over(win.img, _alpha(_ellipse(win, _t(eu, sl), _t(ev, sl), _t(g["ear_a"], sl), ones * 0.17), k),
              skin * 0.9)
        win.commit()
    # head: an egg (wider cranium, narrower jaw) with different half-heights above and below the centre
    head_a = _t(g["head_a"], sl)
    width = torch.mul(v, -head_a * _t(g["egg"], sl), out=full.buf("t1")).add_(head_a)
    hx = torch.sub(u, _t(head_u, sl), out=full.buf("head_x")).div_(width)
    inv_up, inv_lo = 1.0 / _t(g["fh_up"], sl), 1.0 / _t(g["fh_lo"], sl)
    hy = torch.abs(v, out=full.buf("head_y")).mul_((inv_lo - inv_up) * 0.5).addcmul_(v, (inv_up + inv_lo) * 0.5)
    r2 = torch.mul(hx, hx, out=full.buf("head_r2")).addcmul_(hy, hy)
    d = torch.sqrt(r2, out=full.buf("t0")).sub_(1.0).mul_(head_a)
    a_head = full.buf("head_a").copy_(_alpha(d, k))
    _over(img, a_head, skin)
    # forehead lines, under the fringe
    if float(np.max(g["forehead_amt"][sl])) > 0.01:
        fu = [p for st in g["forehead"] for p in (st["mu"] - st["L"], st["mu"] + st["L"])]
        fv = [p for st in g["forehead"] for p in (st["mv"] - 0.3 * st["L"], st["mv"] + 0.3 * st["L"])]
        win = _Window(ws, img, _bbox(g, sl, fu, fv, 0.06), frame)
        crease = _crease_layer(win, [(st, g["forehead_amt"] * 0.3) for st in g["forehead"]], sl)
        if crease is not None:
            _darken(win.img, crease)
        win.commit()
    # fringe: the part of the hair region above the hairline
    hl = torch.sub(u, _t(g["hair_part"], sl), out=full.buf("t0"))
    hl.mul_(hl).mul_(_t(g["hair_curve"], sl)).add_(_t(g["hairline"], sl))
    d = hl.neg_().add_(v)
    torch.maximum(d, d_hair, out=d)
    # a soft hairline: the ramp is about 0.05 face units wide (hair thins out into the forehead), at least a pixel
    _over(img, _alpha(d, torch.clamp(k, max=_HAIRLINE_SHARPNESS)).mul_(hair_amt), hair_c)

    colors = {
        "brow": col(g["brow_c"]), "sclera": col([0.94, 0.93, 0.9]), "iris": col(g["iris_c"]),
        "pupil": col([0.03, 0.02, 0.02]), "lash": col([0.1, 0.07, 0.06]), "nostril": skin * 0.3,
        "lips": col(g["lip_c"]), "mouth": col([0.22, 0.05, 0.06]), "teeth": col([0.93, 0.9, 0.82]),
        "lip_line": col(g["lip_c"]) * 0.4,
    }
    # brows
    for st in g["brows"]:
        win = _Window(ws, img, _bbox(g, sl, *_stroke_pts(st), 0.02), frame)
        _over(win.img, _alpha(_stroke_d(win, _stroke_t(st, sl)), k), colors["brow"])
        win.commit()
    # lines between the eyes: glabella (brow lowering) and across the nose bridge (nose wrinkle)
    _crease_window(ws, img, frame, g, sl, g["mid_creases"])
    # eyes, each with the crease under it (cheek raise)
    for e, creases in zip(g["eyes"], g["eye_creases"]):
        pu, pv = [], []
        for st, _ in creases:
            a, b = _stroke_pts(st)
            pu += a
            pv += b
        pu += [e["u"] - e["w"], e["u"] + e["w"]]
        pv += [e["v"] - np.maximum(e["up"], e["ir_v"]), e["v"] + np.maximum(e["lo"], e["ir_v"])]
        win = _Window(ws, img, _bbox(g, sl, pu, pv, 0.02), frame)
        c = _crease_layer(win, creases, sl)
        if c is not None:
            _darken(win.img, c)
        _draw_eye(win, e, sl, colors)
        win.commit()
    # nose: side lines, alae, nostrils
    items = [(st, vis * 0.3) for st, vis in g["nose_lines"]] + [(st, 0.42) for st in g["alae"]]
    pu, pv = [], []
    for st, _ in items:
        a, b = _stroke_pts(st)
        pu += a
        pv += b
    for nu, nv in g["nostrils"]:
        pu += [nu - g["nostril_a"], nu + g["nostril_a"]]
        pv += [nv - g["nostril_b"], nv + g["nostril_b"]]
    win = _Window(ws, img, _bbox(g, sl, pu, pv, 0.02), frame)
    _darken(win.img, _crease_layer(win, items, sl))
    na, nb = _t(g["nostril_a"], sl), _t(g["nostril_b"], sl)
    for nu, nv in g["nostrils"]:
        _over(win.img, _alpha(_ellipse(win, _t(nu, sl), _t(nv, sl), na, nb), k), colors["nostril"])
    win.commit()
    # nasolabial folds
    for st, amt in g["folds"]:
        _crease_window(ws, img, frame, g, sl, [(st, amt * 0.45)], _FOLD_SOFT)
    # mouth
    m = g["mouth"]
    reach = np.maximum(g["open_up"] + g["lip_u"], g["open_lo"] + g["lip_l"])
    win = _Window(ws, img, _bbox(g, sl, *_stroke_pts(m, reach), 0.02), frame)
    _draw_mouth(win, g, sl, colors)
    win.commit()
    _shade_head(ws, full, img, s, g, sl, a_head, hx, hy, r2, noise_rng)

    # occluders, each in a window around it, on the faces that have one
    occ = g["occluder"][sl]
    for kind in (1, 2):
        rows = np.flatnonzero(occ == kind)
        if len(rows) == 0:
            continue
        sub = sl.start + rows                                  # global face indices
        rows_t = torch.from_numpy(rows)
        fr = {key: val[rows_t] for key, val in frame.items()}
        one = ones[rows_t]
        if kind == 1:  # sunglasses over both eyes
            e0, e1 = g["eyes"]
            pu = [e["u"] + sgn * (e["w"] * 1.25 + 0.03) for e in g["eyes"] for sgn in (-1, 1)]
            pv = [e["v"] + sgn * 0.16 for e in g["eyes"] for sgn in (-1, 1)]
            win = _Window(ws, img, _bbox(g, sub, pu, pv, 0.02), fr, rows)
            acc = win.buf("o0")
            for i, e in enumerate(g["eyes"]):
                d = _ellipse(win, _t(e["u"], sub), _t(e["v"], sub), _t(e["w"] * 1.25 + 0.02, sub), one * 0.14)
                if i == 0:
                    acc.copy_(_alpha(d, win.k))
                else:
                    torch.maximum(acc, _alpha(d, win.k), out=acc)
            bridge = _stroke((e0["u"], e0["v"] - 0.05), (e1["u"], e1["v"] - 0.05), 0.0, 0.018)
            torch.maximum(acc, _alpha(_stroke_d(win, _stroke_t(bridge, sub)), win.k), out=acc)
            tint = col(g["glasses_t"][:, None] * np.array([1.0, 0.9, 0.8]))[rows_t]
            _over(win.img, acc.mul_(0.97), tint)
        else:  # a hand in front of the mouth, a cheek or the chin
            hu_, hv_ = g["hand_u"], g["hand_v"]
            win = _Window(ws, img, _bbox(g, sub, [hu_ - 0.5, hu_ + 0.5], [hv_ - 0.5, hv_ + 0.5], 0.02), fr, rows)
            hc, hs = _t(g["hand_cos"], sub), _t(g["hand_sin"], sub)
            du = torch.sub(win.u, _t(hu_, sub), out=win.buf("o0"))
            dv = torch.sub(win.v, _t(hv_, sub), out=win.buf("o1"))
            along = torch.mul(du, hc, out=win.buf("o2")).addcmul_(dv, hs)
            across = dv.mul_(hc).addcmul_(du, hs, value=-1.0)
            x = torch.mul(along, 2.0, out=win.buf("o0"))
            x.mul_(x)
            y = torch.mul(across, 1.0 / 0.3, out=win.buf("o3"))
            a_hand = _alpha(x.addcmul_(y, y).sqrt_().sub_(1.0).mul_(0.3), win.k)
            _over(win.img, a_hand, skin[rows_t] * 0.97)
            # three finger gaps along the hand's long axis, on its finger half
            f = torch.mul(across, 1.0 / 0.15, out=win.buf("o3"))
            gap = torch.round(f, out=win.buf("o4")).sub_(f).abs_().mul_(0.15).sub_(0.008)
            a_gap = _alpha(gap, win.k).mul_(a_hand)
            a_gap.mul_(torch.gt(along, 0.0, out=ws("o_b", tuple(win.u.shape), torch.bool)))
            _darken(win.img, a_gap.mul_(0.35))
        win.commit()

    # light: directional shading, exposure, contrast, white balance
    L = _t(s["light"], sl) * 0.35
    shade = torch.mul(u, _t(s["light_dir"][:, 0], sl) * L, out=full.buf("t0"))
    shade.addcmul_(v, _t(s["light_dir"][:, 1], sl) * L).clamp_(-0.45, 0.45).add_(1.0)
    img.mul_(shade.unsqueeze(1))
    gain = _t(s["exposure"], sl).unsqueeze(1)
    if color:  # white balance (grey domains have none)
        gain = gain * torch.from_numpy(s["gains"][sl].astype(np.float32)).view(B, 3, 1, 1)
    con = _t(s["contrast"], sl).unsqueeze(1)
    img.mul_(gain * con).add_(0.5 * (1.0 - con))
    # blur: 0..1 blends towards one box pass, 1..2 towards two
    blur = s["blur"][sl]
    if float(blur.max()) > 0:
        b = _t(s["blur"], sl).unsqueeze(1)
        b1 = _box_blur(ws, img, "blur1")
        if float(blur.max()) > 1:
            b1.lerp_(_box_blur(ws, b1, "blur2"), (b - 1.0).clamp_(0.0, 1.0))
        img.lerp_(b1, b.clamp(0.0, 1.0))
    # sensor noise: uniform, one random byte per pixel (luminance noise), scaled to the image's std
    sd = s["noise"][sl]
    if float(sd.max()) > 0:
        raw = torch.from_numpy(noise_rng.integers(0, 256, (B, 1, H, W), dtype=np.uint8))
        nz = ws("noise", (B, 1, H, W)).copy_(raw)
        img.add_(nz.sub_(127.5).mul_(_t(s["noise"] / 73.9, sl).unsqueeze(1)))
    return img


def render(s: Mapping[str, np.ndarray], g: Mapping[str, Any], size: int, clutter: float,
           noise_rng: np.random.Generator, out_size: int | None = None) -> np.ndarray:
    """Pixels of the faces described by ``s`` (:func:`sample_faces`) and ``g`` (:func:`face_geometry`).

    Grey faces (``s["colour"]`` False) are rendered in one channel, colour faces in three; each group in chunks
    of :data:`_CHUNK` faces (grey first, drawing ``noise_rng``'s bytes in that order), resized to ``out_size``
    (bilinear) when given. Returns uint8 ``[N, out, out, 3]``.
    """
    n = len(s["labels"])
    out = out_size or size
    images = np.empty((n, out, out, 3), np.uint8)
    flags = np.asarray(s["colour"], bool)
    order = np.argsort(flags, kind="stable")
    s, g = _take(s, order, n), _take(g, order, n)
    n_grey = int((~flags).sum())
    ws = _Workspace()
    _TLS.cache = _tensor_cache(n, s, g)
    try:
        with torch.no_grad():
            for lo, hi, color in ((0, n_grey, False), (n_grey, n, True)):
                for start in range(lo, hi, _CHUNK):
                    sl = slice(start, min(hi, start + _CHUNK))
                    img = _render_chunk(ws, s, g, sl, size, color, clutter, noise_rng)
                    if out != size:
                        img = F.interpolate(img, size=(out, out), mode="bilinear", align_corners=False,
                                            antialias=out < size)
                    img.mul_(255.0).add_(0.5).clamp_(0.0, 255.0)
                    q = ws("quant", tuple(img.shape), torch.uint8).copy_(img)
                    images[order[sl]] = q.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()
    finally:
        _TLS.cache = None
    return images


def _take(tree: Any, order: np.ndarray, n: int) -> Any:
    """``tree`` (nested dicts/lists/tuples of per-face arrays) with every length-n array reordered."""
    if isinstance(tree, dict):
        return {k: _take(v, order, n) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_take(v, order, n) for v in tree)
    if isinstance(tree, np.ndarray) and tree.ndim >= 1 and len(tree) == n:
        return tree[order]
    return tree


# ---------------------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$FER_LAB_CACHE/synth``, or ``~/.cache/fer-lab/synth``."""
    root = os.environ.get("FER_LAB_CACHE")
    return Path(root) / "synth" if root else Path.home() / ".cache" / "fer-lab" / "synth"


def _cache_key(domain: SynthDomain, n: int, size: int, seed: int, split: str,
               subjects: tuple[int, ...] | None = None) -> str:
    key = {"v": RENDERER_VERSION, "chunk": _CHUNK, "knobs": domain.knobs(), "n": n, "size": size, "seed": seed,
           "split": split}
    if subjects is not None:  # only then: every existing cache entry keeps its key
        key["subjects"] = list(subjects)
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _generate(domain: SynthDomain, n: int, size: int, seed: int, split: str,
              subjects: tuple[int, ...] | None = None, s: dict[str, np.ndarray] | None = None) -> FaceArrays:
    s = sample_faces(domain, n, seed, split, subjects) if s is None else s
    rsize = domain.render_size or size
    g = face_geometry(s, rsize)
    images = render(s, g, rsize, domain.clutter, _rng(seed, split, domain.name, "pixels"), out_size=size)
    lm = landmarks_of(g) * (size / rsize)
    pose = np.stack([s["yaw"], s["pitch"], s["roll"]], 1)
    base = _subject_base(domain.name, split if subjects is None else "test")
    subject = base + s["subject_k"].astype(np.int64)
    return FaceArrays(images, s["labels"].astype(np.int64), lm.astype(np.float32), pose.astype(np.float32),
                      subject.astype(np.int64))


def parse_subjects(subject: Any) -> tuple[int, ...] | None:
    """The ``subject`` parameter of a spec (``3``, ``"0,1,2"``, a list, or ``None``) as a tuple of distinct
    person indices in the order given; ``ValueError`` names the bad value."""
    if subject is None:
        return None
    parts = subject if isinstance(subject, (list, tuple)) else str(subject).replace(";", ",").split(",")
    try:
        ks = [float(str(p).strip()) for p in parts if str(p).strip()]
    except ValueError:
        raise ValueError(f"SynthFER: subject must be a person index or a comma-separated list of them, "
                         f"got {subject!r}") from None
    if not ks or any(k != int(k) or not 0 <= k < 1_000_000 for k in ks):
        raise ValueError(f"SynthFER: subject indices must be integers in 0..999999, got {subject!r}")
    out = tuple(dict.fromkeys(int(k) for k in ks))
    if len(out) != len(ks):
        raise ValueError(f"SynthFER: subject {subject!r} names a person twice")
    return out


def posed_faces(domain: str | SynthDomain, index: Any, pose: Any, n: int = 2000, seed: int = 0,
                split: str = "train", subject: Any = None, **knob_overrides: Any) -> dict[str, np.ndarray]:
    """The draws of a SynthFER set (:func:`sample_faces`, same arguments as :func:`make_synthfer`) with the head
    pose of rows ``index`` replaced by ``pose`` (``[m, 3]`` yaw, pitch, roll in degrees): the same person, the
    same expression (action units), the same light, background and framing, another pose."""
    dom = resolve_domain(domain, **knob_overrides)
    if split not in _SPLIT_CODES:
        raise ValueError(f"split {split!r} is not one of {', '.join(_SPLIT_CODES)}")
    n = _int("n", n, 1)
    s = dict(sample_faces(dom, n, _int("seed", seed, 0), split, parse_subjects(subject)))
    index = np.asarray(index, np.int64).reshape(-1)
    pose = np.asarray(pose, np.float64).reshape(len(index), 3)
    if len(index) and (index.min() < 0 or index.max() >= n):
        raise ValueError(f"SynthFER: face index out of range 0..{n - 1}")
    for col, name in enumerate(("yaw", "pitch", "roll")):
        s[name] = s[name].copy()
        # a pose read back from a stored set is float32: where it is the face's own angle, keep the exact draw
        own = pose[:, col].astype(np.float32) == s[name][index].astype(np.float32)
        s[name][index] = np.where(own, s[name][index], pose[:, col])
    return s


def render_at_pose(domain: str | SynthDomain, index: Any, pose: Any, n: int = 2000, size: int = 112,
                   seed: int = 0, split: str = "train", subject: Any = None,
                   **knob_overrides: Any) -> tuple[np.ndarray, np.ndarray]:
    """Faces ``index`` of a SynthFER set re-rendered at ``pose`` (the truth for a pose swap): uint8 images
    ``[m, size, size, 3]`` and their landmarks ``[m, 5, 2]``.

    The whole set is rendered (never cached) so that every face gets the pixel-noise draws it has in the set:
    a face re-rendered at its own pose equals the stored face bit for bit, and at another pose only the pose
    differs. ``split`` is ``train``, ``test`` or ``val``."""
    dom = resolve_domain(domain, **knob_overrides)
    s = posed_faces(dom, index, pose, n, seed, split, subject)
    data = _generate(dom, int(n), _int("size", size, 16), int(seed), split, parse_subjects(subject), s=s)
    index = np.asarray(index, np.int64).reshape(-1)
    return data.images[index], data.landmarks[index]


def make_synthfer(domain: str | SynthDomain = "lab", n: int = 2000, size: int = 112, seed: int = 0,
                  split: str = "train", cache_dir: str | os.PathLike | None = None, *, cache: bool = True,
                  subject: Any = None, **knob_overrides: Any) -> FaceArrays:
    """SynthFER faces of one domain and split as :class:`FaceArrays`.

    ``domain`` is a preset name from :data:`DOMAINS` or a :class:`SynthDomain`; ``knob_overrides`` replace its
    knobs (unknown names raise ``ValueError``). ``split`` is ``train``, ``test``, ``val`` or ``all`` (see the
    module docstring). The result is cached under ``cache_dir`` (``None``: :func:`default_cache_dir`) unless
    ``cache=False``; a cached result is loaded memory-mapped.

    ``subject`` (a person index or a list, ``"0,1,2"`` in a spec) makes a personalised set: every face shows one
    of those people of the domain's held-out identity pool, the same people in every split (see
    :func:`sample_faces`); subject ids are then ``base + k`` for person ``k``.
    """
    dom = resolve_domain(domain, **knob_overrides)
    subjects = parse_subjects(subject)
    n, size, seed = _int("n", n, 0), _int("size", size, 16), _int("seed", seed, 0)
    if split not in ("train", "test", "val", "all"):
        raise ValueError(f"split {split!r} is not one of train, test, val, all")
    folder, damaged = None, False
    if cache:
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        who = "" if subjects is None else "-subj" + "_".join(map(str, subjects[:4])) + ("_" if len(subjects) > 4 else "")
        key = _cache_key(dom, n, size, seed, split, subjects)
        folder = root / f"{dom.name}{who}-{split}-n{n}-s{size}-seed{seed}-{key}"
        if (folder / "meta.json").is_file():
            try:
                return FaceArrays.load(folder)
            except (FileNotFoundError, ValueError):
                damaged = True  # rebuild it and replace it
    if split == "all":
        n_test = n // 5
        a = _generate(dom, n - n_test, size, seed, "train", subjects)
        b = _generate(dom, n_test, size, seed, "test", subjects)
        data = FaceArrays(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]),
                          np.concatenate([a.landmarks, b.landmarks]), np.concatenate([a.pose, b.pose]),
                          np.concatenate([a.subject, b.subject]))
    else:
        data = _generate(dom, n, size, seed, split, subjects)
    prior = np.asarray(dom.class_prior, np.float64)
    data.meta = json.loads(json.dumps({
        "name": "synthfer", "domain": dom.name, "split": split, "n": n, "size": size, "seed": seed,
        "knobs": dom.knobs(), "class_prior": dict(zip(EXPRESSIONS, (prior / prior.sum()).round(6).tolist())),
        "label_noise": dom.label_noise if split in ("train", "all") else 0.0,
        "label_noise_note": "applied to train labels only; test/val labels are clean",
        "renderer_version": RENDERER_VERSION, "landmark_convention": "pixel (i,j) covers [j,j+1)x[i,i+1)",
    }))
    if subjects is not None:
        data.meta["subjects"] = list(subjects)
    if folder is not None:
        data.save(folder, overwrite=damaged)  # another process may be writing the same entry: keep the first
    return data


def _int(name: str, value: Any, lo: int) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"SynthFER: {name} must be an integer, got {value!r}") from None
    if f != int(f) or f < lo:
        raise ValueError(f"SynthFER: {name} must be an integer >= {lo}, got {value!r}")
    return int(f)


@DATASETS.register("synth")
def synth(arg: str, split: str = "train", n: int = 2000, size: int = 112, seed: int = 0, cache: bool = True,
          subject: Any = None, **knobs: Any) -> FaceArrays:
    """Dataset factory for specs ``synth:<domain>?n=..&size=..&seed=..&cache=..&subject=..&<knob>=..``
    (``subject=3`` or ``subject=0,1,2``: a personalised set of those held-out people, see :func:`make_synthfer`)."""
    return make_synthfer(arg or "lab", n=n, size=size, seed=seed, split=split, cache=cache, subject=subject,
                         **knobs)
