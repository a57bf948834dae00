"""Tests of SynthFER: API, determinism, caching, splits, priors, and that the landmarks sit on the features."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_lab.data import synth as S
from fer_lab.data.spec import load_dataset
from fer_lab.data.store import FaceArrays
from fer_lab.labels import EXPRESSIONS, FLIP_PERMUTATION, NUM_CLASSES

ARRAYS = ("images", "labels", "landmarks", "pose", "subject")
NEUTRAL_ONLY = "0,0,0,0,0,0,1"
REPO = Path(__file__).resolve().parents[2]


def make(domain="lab", **kw) -> FaceArrays:
    kw.setdefault("n", 48)
    kw.setdefault("size", 64)
    kw.setdefault("cache", False)
    return S.make_synthfer(domain, **kw)


def assert_same(a: FaceArrays, b: FaceArrays) -> None:
    for key in ARRAYS:
        np.testing.assert_array_equal(np.asarray(getattr(a, key)), np.asarray(getattr(b, key)), err_msg=key)


def digest(d: FaceArrays) -> str:
    h = hashlib.sha256()
    for key in ARRAYS:
        h.update(np.ascontiguousarray(getattr(d, key)).tobytes())
    return h.hexdigest()


# --- feature probes (plain numpy) --------------------------------------------------------------------------

def pupil_errors(images: np.ndarray, landmarks: np.ndarray, rows=(0, 1)) -> np.ndarray:
    """Distance (px) from each eye landmark to the centroid of the darkest pixels (the pupil) around it."""
    n, h, w = images.shape[:3]
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    r = max(2.0, 0.06 * 0.34 * w)
    out = []
    for i in range(n):
        img = images[i, ..., 0].astype(float)
        for j in rows:
            x, y = landmarks[i, j]
            win = (np.abs(xx - x) <= r) & (np.abs(yy - y) <= r)
            thr = img[win].min() + 25
            sel = win & (img <= thr)
            wgt = thr - img[sel] + 1
            cx, cy = (xx[sel] * wgt).sum() / wgt.sum(), (yy[sel] * wgt).sum() / wgt.sum()
            out.append(np.hypot(cx - x, cy - y))
    return np.array(out)


def pupil_darkness(images: np.ndarray, landmarks: np.ndarray, rows=(0, 1)) -> np.ndarray:
    """Grey level of the pixel under each eye landmark (the pupil is nearly black)."""
    n, h, w = images.shape[:3]
    out = []
    for i in range(n):
        for j in rows:
            x, y = landmarks[i, j]
            ix, iy = int(np.floor(x)), int(np.floor(y))
            out.append(images[i, iy, ix, 0] if 0 <= ix < w and 0 <= iy < h else 255)
    return np.array(out, float)


def mouth_end_errors(images: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Signed offsets (px) between the mouth-corner landmarks and the ends of the dark lip line.

    The darkness of each column of a band around the (near-horizontal) mouth is summed; an end is where that
    mass falls to half its level just inside that end (4-10 % of the mouth's width in, where the lips have
    tapered and the line is what is left), which is where a flat line end crosses a pixel. Each column's skin
    level is the mean of the skin above and below the band, so the head's smooth shading does not count.
    """
    n, h, w = images.shape[:3]
    R = 0.34 * w
    xs = np.arange(w) + 0.5
    ys = np.arange(h) + 0.5
    out = []
    for i in range(n):
        img = images[i, ..., 0].astype(float)
        (xl, yl), (xr, yr) = landmarks[i, 3], landmarks[i, 4]
        half_h = 0.06 * R + abs(yl - yr) / 2 + 1.0
        off = np.abs(ys - (yl + yr) / 2)
        band = off <= half_h
        above = (ys < (yl + yr) / 2) & (off >= half_h + 0.12 * R) & (off <= half_h + 0.2 * R)
        below = (ys > (yl + yr) / 2) & (off >= half_h + 0.14 * R) & (off <= half_h + 0.22 * R)
        skin = 0.5 * (np.median(img[above], 0) + np.median(img[below], 0))
        mass = np.clip((skin - img[band]) / skin, 0, 1).sum(0)

        def end(corner: float, step: int) -> float:
            inner = corner - step * np.array([0.04, 0.1]) * (xr - xl)
            half = 0.5 * mass[(xs > inner.min()) & (xs < inner.max())].mean()
            j = int(inner.mean())
            while 0 < j < w - 1 and mass[j + step] >= half:
                j += step
            f = (mass[j] - half) / max(mass[j] - mass[j + step], 1e-9)
            return xs[j] + step * f

        out.append((end(xl, -1) - xl, end(xr, 1) - xr))
    return np.array(out)


def nostril_offsets(images: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(dx, dy) from the nose landmark to the centroid of the dark nostrils just below it."""
    n, h, w = images.shape[:3]
    R = 0.34 * w
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    out = []
    for i in range(n):
        img = images[i, ..., 0].astype(float)
        x, y = landmarks[i, 2]
        win = (np.abs(xx - x) <= 0.12 * R) & (yy >= y - 0.02 * R) & (yy <= y + 0.1 * R)
        lo, skin = img[win].min(), np.median(img[win])
        thr = lo + 0.5 * (skin - lo)          # halfway between the darkest pixel and the skin around it
        sel = win & (img <= thr)
        wgt = thr - img[sel] + 1              # darker pixels weigh more (as for the pupils)
        out.append(((xx[sel] * wgt).sum() / wgt.sum() - x, (yy[sel] * wgt).sum() / wgt.sum() - y))
    return np.array(out)


# --- API ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("domain", ["lab", "wild", "lowres", "profile"])
def test_every_domain_renders_with_the_right_shapes(domain):
    d = make(domain, n=40, size=56)
    assert isinstance(d, FaceArrays) and len(d) == 40
    assert d.images.dtype == np.uint8 and d.images.shape == (40, 56, 56, 3)
    assert d.labels.dtype == np.int64 and d.labels.min() >= 0 and d.labels.max() < NUM_CLASSES
    assert d.landmarks.dtype == np.float32 and d.landmarks.shape == (40, 5, 2)
    assert d.pose.dtype == np.float32 and d.pose.shape == (40, 3) and np.isfinite(d.pose).all()
    assert d.subject.dtype == np.int64 and (d.subject >= 0).all()
    assert ((d.landmarks > 0) & (d.landmarks < 56)).all()
    assert d.images.std() > 10  # not blank
    m = d.meta
    assert m["name"] == "synthfer" and m["domain"] == domain and m["split"] == "train"
    assert (m["n"], m["size"], m["seed"]) == (40, 56, 0)
    assert m["knobs"] == S.DOMAINS[domain].knobs()
    assert list(m["class_prior"]) == list(EXPRESSIONS)
    assert m["label_noise"] == S.DOMAINS[domain].label_noise
    json.dumps(m)  # JSON-able


def test_grey_and_colour_images():
    low = make("lowres", n=30)
    assert (low.images[..., 0] == low.images[..., 1]).all() and (low.images[..., 0] == low.images[..., 2]).all()
    wild = make("wild", n=30)
    assert (wild.images[..., 0] != wild.images[..., 2]).mean() > 0.5
    lab = make("lab", n=300, size=32)  # mostly grey, a few colour sessions as in CK+
    grey = (lab.images[..., 0] == lab.images[..., 2]).all(axis=(1, 2))
    assert 0.8 < grey.mean() < 0.97


def test_pose_follows_the_domain():
    lab, prof = make("lab", n=60), make("profile", n=60)
    assert np.abs(lab.pose[:, 0]).max() <= 4.0 + 1e-4
    lo, hi = S.DOMAINS["profile"].yaw
    assert lo >= 30 and (np.abs(prof.pose[:, 0]) >= lo - 1e-4).all() and (np.abs(prof.pose[:, 0]) <= hi + 1e-4).all()
    assert (prof.pose[:, 0] > 0).any() and (prof.pose[:, 0] < 0).any()
    # yaw moves the inner features sideways: the nose leaves the middle of the eyes towards the turn
    mid = prof.landmarks[:, :2, 0].mean(1)
    assert (np.sign(prof.landmarks[:, 2, 0] - mid) == np.sign(prof.pose[:, 0])).mean() > 0.9


def test_unknown_domain_or_knob_is_named():
    with pytest.raises(ValueError, match="atlantis.*known domains: lab, wild, lowres, profile"):
        make("atlantis")
    with pytest.raises(ValueError, match="'sparkle'.*known knobs:.*occlusion"):
        make("lab", sparkle=1)
    with pytest.raises(ValueError, match="occlusion"):
        make("lab", occlusion=1.5)
    with pytest.raises(ValueError, match="split"):
        make("lab", split="dev")


def test_spec_factory(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path))
    d = load_dataset("synth:wild?n=24&size=48&occlusion=0.5&yaw=0,10")
    assert len(d) == 24 and d.image_size == (48, 48)
    assert d.meta["domain"] == "wild" and d.meta["knobs"]["occlusion"] == 0.5 and d.meta["knobs"]["yaw"] == [0, 10]
    assert d.meta["spec"].startswith("synth:wild")
    assert list((tmp_path / "synth").iterdir())  # cached under $FER_LAB_CACHE/synth
    t = load_dataset("synth:lab?n=10&size=32&cache=false", split="test")
    assert t.meta["split"] == "test"
    with pytest.raises(ValueError, match="sparkle"):
        load_dataset("synth:lab?n=10&size=32&cache=false&sparkle=2")
    with pytest.raises(ValueError, match="known domains"):
        load_dataset("synth:mars?n=10&size=32&cache=false")


# --- determinism and caching --------------------------------------------------------------------------

def test_same_seed_same_arrays_other_seed_other_arrays():
    assert_same(make("wild", seed=3), make("wild", seed=3))
    a, b = make("wild", seed=3), make("wild", seed=4)
    assert not np.array_equal(a.images, b.images)
    assert not np.array_equal(a.landmarks, b.landmarks)


def test_bit_identical_across_processes():
    code = (
        "import hashlib, numpy as np\n"
        "from fer_lab.data.synth import make_synthfer\n"
        "d = make_synthfer('wild', n=48, size=64, seed=5, cache=False)\n"
        "h = hashlib.sha256()\n"
        "for k in ('images', 'labels', 'landmarks', 'pose', 'subject'):\n"
        "    h.update(np.ascontiguousarray(getattr(d, k)).tobytes())\n"
        "print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == digest(make("wild", n=48, size=64, seed=5))


def test_cache_round_trip(tmp_path, monkeypatch):
    first = S.make_synthfer("lab", n=20, size=32, seed=1, cache_dir=tmp_path)
    entries = list(tmp_path.iterdir())
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()

    def boom(*a, **k):
        raise AssertionError("should have been loaded from the cache")

    monkeypatch.setattr(S, "_generate", boom)
    second = S.make_synthfer("lab", n=20, size=32, seed=1, cache_dir=tmp_path)
    assert_same(first, second)
    assert second.meta == first.meta
    monkeypatch.undo()
    # any knob (or argument) change is a different entry
    S.make_synthfer("lab", n=20, size=32, seed=1, cache_dir=tmp_path, blur="0,0")
    assert len(list(tmp_path.iterdir())) == 2


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path))
    assert S.default_cache_dir() == tmp_path / "synth"
    monkeypatch.delenv("FER_LAB_CACHE")
    assert S.default_cache_dir() == Path.home() / ".cache" / "fer-lab" / "synth"


def test_knob_override_keeps_the_other_draws():
    base, occl = make("lab", n=40), make("lab", n=40, occlusion=1.0)
    for key in ("labels", "landmarks", "pose", "subject"):
        np.testing.assert_array_equal(getattr(base, key), getattr(occl, key))
    assert not np.array_equal(base.images, occl.images)


def test_same_faces_at_every_size():
    small, big = make("wild", n=20, size=48), make("wild", n=20, size=96)
    np.testing.assert_allclose(big.landmarks, 2 * small.landmarks, atol=1e-3)
    np.testing.assert_array_equal(small.pose, big.pose)
    lo48, lo96 = make("lowres", n=20, size=48), make("lowres", n=20, size=96)  # rendered at 48 either way
    np.testing.assert_allclose(lo96.landmarks, 2 * lo48.landmarks, atol=1e-3)
    down = lo96.images.reshape(20, 48, 2, 48, 2, 3).mean((2, 4))
    assert np.abs(down - lo48.images).mean() < 6


# --- splits, subjects, priors, labels -------------------------------------------------------------------

def test_train_and_test_are_disjoint():
    tr, te = make("wild", n=60), make("wild", n=60, split="test")
    assert not set(tr.subject.tolist()) & set(te.subject.tolist())
    assert not np.array_equal(tr.images[:5], te.images[:5])
    al = make("wild", n=50, split="all")
    assert len(al) == 50 and al.meta["split"] == "all"
    assert len(set(al.subject[:40].tolist()) & set(al.subject[40:].tolist())) == 0


def test_a_subject_keeps_its_identity():
    dom = S.DOMAINS["lab"]
    s = S.sample_faces(dom, 60, seed=0, split="train")
    assert len(np.unique(s["subject_k"])) == 6  # 10 images per subject
    for key in ("eye_d", "mouth_w", "skin_t", "hairline"):
        for k in np.unique(s["subject_k"]):
            assert np.ptp(s[key][s["subject_k"] == k]) == 0
    # subject k is the same person whatever n is
    s2 = S.sample_faces(dom, 200, seed=0, split="train")
    first = {int(k): float(s2["eye_d"][s2["subject_k"] == k][0]) for k in np.unique(s["subject_k"])}
    assert all(first[int(k)] == float(s["eye_d"][s["subject_k"] == k][0]) for k in np.unique(s["subject_k"]))


def test_class_prior_follows_meta():
    d = make("wild", n=500, size=16, split="test")  # clean labels: the counts are exact up to rounding
    prior = np.array([d.meta["class_prior"][e] for e in EXPRESSIONS])
    counts = np.bincount(d.labels, minlength=NUM_CLASSES)
    assert np.abs(counts - prior * 500).max() <= 1
    assert counts[EXPRESSIONS.index("happiness")] > 3 * counts[EXPRESSIONS.index("fear")]
    lab = make("lab", n=70, size=16)
    assert (np.bincount(lab.labels, minlength=NUM_CLASSES) == 10).all()


def test_label_noise_only_on_train():
    noisy, clean = make("wild", n=400, size=16), make("wild", n=400, size=16, label_noise=0)
    flipped = (noisy.labels != clean.labels).mean()
    assert 0.05 < flipped < 0.15  # wild's rate is 0.1
    np.testing.assert_array_equal(noisy.images, clean.images)  # same faces, only the labels change
    t1, t2 = make("wild", n=200, size=16, split="test"), make("wild", n=200, size=16, split="test", label_noise=0)
    np.testing.assert_array_equal(t1.labels, t2.labels)
    assert t1.meta["label_noise"] == 0.0 and noisy.meta["label_noise"] == 0.1


# --- landmarks are exact ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def frontal():
    """Lab faces of every class at 112 px."""
    return make("lab", n=42, size=112, seed=3, split="test", class_prior="1,1,1,1,1,1,1")


@pytest.fixture(scope="module")
def neutral():
    return make("lab", n=20, size=112, seed=4, split="test", class_prior=NEUTRAL_ONLY)


def test_landmark_order(frontal):
    lm = frontal.landmarks
    assert (lm[:, 0, 0] < lm[:, 1, 0]).all() and (lm[:, 3, 0] < lm[:, 4, 0]).all()
    assert (lm[:, 0, 0] < lm[:, 2, 0]).all() and (lm[:, 2, 0] < lm[:, 1, 0]).all()
    assert (lm[:, :2, 1].max(1) < lm[:, 2, 1]).all() and (lm[:, 2, 1] < lm[:, 3:, 1].min(1)).all()


def assert_dark_under_eye_landmarks(images: np.ndarray, landmarks: np.ndarray, labels: np.ndarray) -> None:
    """The pixel under each eye landmark is the pupil's (nearly black); on disgust faces AU9 narrows the eyes to
    slits whose lids meet over the pupil (the landmark stays the eye centre), so it is the dark lash line."""
    dark = pupil_darkness(images, landmarks).reshape(-1, 2)
    squint = labels == EXPRESSIONS.index("disgust")
    assert squint.any() and dark[~squint].max() < 60
    assert dark[squint].max() < 90


def test_eye_landmarks_sit_on_the_pupils(frontal):
    err = pupil_errors(frontal.images, frontal.landmarks)
    assert err.max() < 1.5 and err.mean() < 0.6
    assert_dark_under_eye_landmarks(frontal.images, frontal.landmarks, frontal.labels)


def test_nose_landmark_is_above_the_nostrils(frontal):
    off = nostril_offsets(frontal.images, frontal.landmarks)
    R = 0.34 * 112
    assert np.abs(off[:, 0]).max() < 1.5
    assert (off[:, 1] > 0).all() and (off[:, 1] < 0.1 * R).all()


def test_mouth_landmarks_are_the_ends_of_the_mouth(neutral):
    err = mouth_end_errors(neutral.images, neutral.landmarks)
    assert np.abs(err).max() < 1.0


def test_landmarks_follow_a_horizontal_flip(frontal, neutral):
    for d, check in ((frontal, "eyes"), (neutral, "mouth")):
        W = d.images.shape[2]
        images = np.ascontiguousarray(d.images[:, :, ::-1])
        lm = d.landmarks[:, list(FLIP_PERMUTATION)].copy()
        lm[..., 0] = W - lm[..., 0]
        assert (lm[:, 0, 0] < lm[:, 1, 0]).all() and (lm[:, 3, 0] < lm[:, 4, 0]).all()
        if check == "eyes":
            assert pupil_errors(images, lm).max() < 1.5
            assert_dark_under_eye_landmarks(images, lm, d.labels)
        else:
            assert np.abs(mouth_end_errors(images, lm)).max() < 1.0


def test_landmarks_follow_a_crop(frontal):
    x0, y0, w, h = 9, 14, 90, 84
    images = frontal.images[:, y0:y0 + h, x0:x0 + w]
    lm = frontal.landmarks - np.array([x0, y0], np.float32)
    assert pupil_errors(images, lm).max() < 1.5
    assert_dark_under_eye_landmarks(images, lm, frontal.labels)
    # the uncropped landmarks are off by the crop offset, so they miss the pupils
    assert np.median(pupil_darkness(images, frontal.landmarks)) > 100


def test_landmarks_sit_on_the_pupils_under_pose_and_roll():
    d = make("lab", n=30, size=112, seed=6, yaw="10,25", roll=12, pitch=8, class_prior=NEUTRAL_ONLY)
    near_eye = np.where(d.pose[:, 0] > 0, 0, 1)  # the eye turned towards the camera is the less foreshortened
    err = pupil_errors(d.images, d.landmarks, rows=(0, 1)).reshape(-1, 2)
    assert err[np.arange(30), near_eye].max() < 1.5


# --- v4's action units and soft furrows, on the drawing parameters ------------------------------------------

def _faces_with(units: dict[str, float], n: int = 6):
    s = S.sample_faces(S.resolve_domain("lab"), n=n, seed=0, split="test")
    s["au"][:] = 0.0
    for name, value in units.items():
        s["au"][:, S.ACTION_UNITS.index(name)] = value
    return s


def test_au16_pulls_the_lower_lip_down_and_shows_the_lower_teeth():
    assert S.ACTION_UNITS[-1] == "lower_lip_depress" and len(S.ACTION_UNITS) == S.PROTOTYPES.shape[1] == 15
    rest, au16 = S.face_geometry(_faces_with({}), 112), S.face_geometry(_faces_with({"lower_lip_depress": 1.0}), 112)
    assert (au16["open_lo"] > rest["open_lo"] + 0.05).all() and (au16["teeth_lo"] > rest["teeth_lo"] + 0.03).all()
    np.testing.assert_allclose(au16["lip_l"] / rest["lip_l"], 1.3)
    np.testing.assert_allclose(au16["mouth_sq"], 0.5)
    np.testing.assert_allclose(au16["mouth_l"][0], rest["mouth_l"][0])   # the corners stay where they were
    assert S.PROTOTYPES[EXPRESSIONS.index("disgust"), -1] > 0.5
    assert (S.PROTOTYPES[[EXPRESSIONS.index(e) for e in EXPRESSIONS if e != "disgust"], -1] == 0).all()


def test_au9_narrows_the_eyes_down_to_a_slit():
    rest = S.face_geometry(_faces_with({}), 112)
    for nw, up, lo in ((1.0, 0.65, 0.4), (1.25, 0.5625, 0.25)):
        g = S.face_geometry(_faces_with({"nose_wrinkle": nw}), 112)
        for e, e0 in zip(g["eyes"], rest["eyes"]):
            np.testing.assert_allclose(e["up"] / e0["up"], up, rtol=1e-6)
            np.testing.assert_allclose(e["lo"] / e0["lo"], lo, rtol=1e-6)
    g = S.face_geometry(_faces_with({"nose_wrinkle": 1.25, "cheek_raise": 1.25, "lid_tight": 1.25}), 112)
    for e, e0 in zip(g["eyes"], rest["eyes"]):        # the floors: a slit, never a closed eye
        np.testing.assert_allclose(e["up"] / e0["up"], 0.2, rtol=1e-6)
        np.testing.assert_allclose(e["lo"] / e0["lo"], 0.15, rtol=1e-6)


def _line_coverage(k: float, soft: float) -> np.ndarray:
    """Coverage across a horizontal crease of half width 0.01 at v = 0, sampled every 0.005 face units."""
    ws = S._Workspace()
    v = torch.arange(-0.1, 0.1001, 0.005, dtype=torch.float32).view(1, -1, 1)
    u = torch.zeros_like(v)
    st = S._stroke((np.array([-0.5]), np.array([0.0])), (np.array([0.5]), np.array([0.0])), 0.0, np.array([0.01]))
    cv = S._Canvas(ws, torch.zeros(1, 1, v.shape[1], 1), u, v, torch.full((1, 1, 1), k))
    return S._crease_layer(cv, [(st, np.ones(1))], slice(0, 1), soft)[0, :, 0].numpy().copy()


def test_a_soft_crease_fades_out_over_its_width():
    sharp, soft = _line_coverage(41.0, 0.0), _line_coverage(41.0, 0.05)
    v = np.arange(-0.1, 0.1001, 0.005)
    at = lambda d: int(np.argmin(np.abs(v - d)))
    assert sharp[at(0.03)] == 0.0 and 0.0 < soft[at(0.03)] < soft[at(0.02)] < soft[at(0.0)]
    assert soft[at(0.04)] == pytest.approx(0.0, abs=1e-6)        # half the ramp beyond the half width: gone
    assert soft[at(0.0)] < sharp[at(0.0)] - 0.1                  # a shadow, fainter than a drawn line
    np.testing.assert_allclose(_line_coverage(10.0, 0.05), _line_coverage(10.0, 0.0))  # a pixel wider than the ramp
