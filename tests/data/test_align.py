"""Tests of face alignment: the similarity transform, the warp's coordinate convention, the four modes, and MTCNN
on a real photograph that scikit-image ships (Eileen Collins, ``skimage.data.astronaut()``)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from PIL import Image

from fer_lab.data import align as A
from fer_lab.labels import FLIP_PERMUTATION, LANDMARKS

HAVE_FACENET = importlib.util.find_spec("facenet_pytorch") is not None
needs_mtcnn = pytest.mark.skipif(not HAVE_FACENET, reason="facenet-pytorch is not installed "
                                 "(pip install --no-deps -r requirements/no-deps.txt; scripts/setup.sh does it)")

#: Hand-checked on 10x crops of skimage.data.astronaut() (continuous pixel coordinates, pixel centres at +0.5):
#: iris centres, the tip of the nose (its highlight, above the nostrils), the two points where the lips meet.
ASTRONAUT_5 = np.array([[203.5, 101.0], [246.0, 103.0], [224.0, 127.0], [202.5, 140.5], [244.5, 141.5]])
ASTRONAUT_IOD = float(np.hypot(*(ASTRONAUT_5[1] - ASTRONAUT_5[0])))  # ~42.5 px


def rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def blob_image(points: np.ndarray, h: int, w: int, sigma: float = 2.0) -> np.ndarray:
    """Grey Gaussian blobs (peak 250) centred at continuous ``points`` on black, as [h, w, 3] uint8."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    v = np.zeros((h, w))
    for x, y in points:
        v = np.maximum(v, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)))
    return np.repeat((250 * v).round().astype(np.uint8)[..., None], 3, axis=2)


def blob_centres(image: np.ndarray, near: np.ndarray, radius: float) -> np.ndarray:
    """Intensity-weighted centroid of the pixels within ``radius`` of each point in ``near``."""
    g = image[..., 0].astype(float)
    yy, xx = np.mgrid[0:g.shape[0], 0:g.shape[1]] + 0.5
    out = []
    for x, y in near:
        wgt = g * ((xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2)
        out.append(((xx * wgt).sum() / wgt.sum(), (yy * wgt).sum() / wgt.sum()))
    return np.array(out)


# --- template and geometry -------------------------------------------------------------------------------------

def test_template_layout_and_scaling():
    t = A.reference_landmarks(112)
    np.testing.assert_allclose(t, A.REFERENCE_5, atol=1e-5)
    np.testing.assert_allclose(A.reference_landmarks(224), 2 * A.REFERENCE_5, atol=1e-4)
    assert t.shape == (len(LANDMARKS), 2) and t.dtype == np.float32
    le, re, nose, ml, mr = t
    assert le[0] < nose[0] < re[0] and ml[0] < nose[0] < mr[0]          # "left" = smaller x
    assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])               # eyes above nose above mouth
    # the template is left/right symmetric up to a pixel: mirroring swaps the rows of FLIP_PERMUTATION
    mirrored = np.stack([112 - t[:, 0], t[:, 1]], 1)[list(FLIP_PERMUTATION)]
    assert np.abs(mirrored - t).max() < 1.0
    with pytest.raises(ValueError):
        A.reference_landmarks(0)
    with pytest.raises(ValueError):
        A.REFERENCE_5[0, 0] = 1.0  # read-only: nobody can move the template for everyone else


@pytest.mark.parametrize("deg,scale,shift", [(0, 1, (0, 0)), (23.5, 1.7, (-40, 12.25)), (-170, 0.31, (5, 300)),
                                             (90, 3.0, (0.5, -0.5))])
def test_similarity_transform_recovers_a_known_transform(deg, scale, shift):
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 200, (7, 2))
    m_true = np.concatenate([scale * rotation(deg), np.array(shift)[:, None]], 1)
    dst = src @ m_true[:, :2].T + m_true[:, 2]
    m = A.similarity_transform(src, dst)
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m, m_true, atol=1e-9)
    np.testing.assert_allclose(A.apply_transform(m, src), dst, atol=1e-3)
    np.testing.assert_allclose(A.invert_transform(A.invert_transform(m)), m, atol=1e-9)
    np.testing.assert_allclose(A.apply_transform(A.invert_transform(m), dst), src, atol=1e-3)


def test_similarity_transform_is_least_squares_and_never_reflects():
    rng = np.random.default_rng(2)
    t = A.reference_landmarks(112).astype(np.float64)
    for _ in range(50):
        src = rng.uniform(0, 300, (5, 2))
        for dst in (src + rng.normal(0, 5, src.shape), np.stack([-src[:, 0], src[:, 1]], 1), t):
            m = A.similarity_transform(src, dst)
            assert np.linalg.det(m[:, :2]) > 0
            a, b = m[0, 0], m[1, 0]                       # a proper similarity: [[a, -b], [b, a]]
            np.testing.assert_allclose(m[:, :2], [[a, -b], [b, a]], atol=1e-9)
    # least squares: no nearby similarity does better
    src, dst = rng.uniform(0, 100, (5, 2)), rng.uniform(0, 100, (5, 2))
    m = A.similarity_transform(src, dst)
    err = ((A.apply_transform(m, src) - dst) ** 2).sum()
    for _ in range(200):
        a, b, tx, ty = m[0, 0], m[1, 0], m[0, 2], m[1, 2]
        a, b, tx, ty = np.array([a, b, tx, ty]) + rng.normal(0, [1e-3, 1e-3, 1e-2, 1e-2])
        mm = np.array([[a, -b, tx], [b, a, ty]])
        assert ((A.apply_transform(mm, src) - dst) ** 2).sum() >= err - 1e-6


def test_similarity_transform_rejects_bad_input():
    with pytest.raises(ValueError, match="coincide"):
        A.similarity_transform(np.ones((5, 2)), np.random.default_rng(0).uniform(size=(5, 2)))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        A.similarity_transform(np.ones((5, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="finite"):
        A.similarity_transform(np.array([[0, 0], [1, np.nan]]), np.zeros((2, 2)))


def test_five_from_68():
    rng = np.random.default_rng(3)
    p68 = rng.uniform(0, 100, (68, 2))
    five = A.five_from_68(p68)
    expected = np.stack([p68[36:42].mean(0), p68[42:48].mean(0), p68[30], p68[48], p68[54]])
    np.testing.assert_allclose(five, expected, rtol=1e-6)
    batch = A.five_from_68(np.stack([p68, p68 + 1]))
    assert batch.shape == (2, 5, 2)
    np.testing.assert_allclose(batch[1], expected + 1, rtol=1e-6)
    with pytest.raises(ValueError, match="68"):
        A.five_from_68(rng.uniform(size=(5, 2)))


# --- warping ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("deg,scale", [(0, 1.0), (17, 1.3), (-35, 0.8), (60, 0.33)])
def test_warp_moves_content_where_the_matrix_sends_it(deg, scale):
    pts = np.array([[40.3, 50.2], [150.5, 60.0], [95.0, 140.7]])
    img = blob_image(pts, 200, 210, sigma=4.0)
    m = np.concatenate([scale * rotation(deg), np.array([[20.0], [-10.0]])], 1)
    m[:, 2] += 130 - A.apply_transform(m, pts.mean(0)[None])[0]  # centre the content in a 260 output
    out = A.warp_affine(img, m, 260)
    want = A.apply_transform(m, pts)
    got = blob_centres(out, want, radius=max(6.0, 12 * scale))
    np.testing.assert_allclose(got, want, atol=0.15)  # continuous coordinates throughout, no half-pixel drift
    if scale > 0.5:  # where warp_affine does not pre-reduce, the torch path agrees up to rounding
        t = A.warp_affine_batch(img[None], m[None], 260).numpy()[0]
        assert np.abs(t.astype(int) - out.astype(int)).max() <= 1


def test_warp_pre_reduces_large_shrinks_without_aliasing():
    # a 1-px checkerboard shrunk 4x must come out flat grey (a plain affine sample would keep full contrast)
    board = ((np.indices((256, 256)).sum(0) % 2) * 255).astype(np.uint8)
    board = np.repeat(board[..., None], 3, axis=2)
    out = A.warp_affine(board, np.array([[0.25, 0, 0], [0, 0.25, 0]]), 64)
    assert abs(out[2:-2, 2:-2].mean() - 127.5) < 2 and out[2:-2, 2:-2].std() < 2


def test_warp_is_deterministic():
    img = np.random.default_rng(5).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    m = A.similarity_transform(np.array([[20, 30], [50, 31], [35, 50.0]]), A.reference_landmarks(112)[:3])
    np.testing.assert_array_equal(A.warp_affine(img, m, 112), A.warp_affine(img, m, 112))


# --- the four modes without a detector -------------------------------------------------------------------------

def face_from_template(size=160, deg=12.0, scale=1.1, shift=(15.0, 20.0), seed=0):
    """Five blobs at a known similarity image of the template, and those five points (with 0.3 px noise)."""
    rng = np.random.default_rng(seed)
    m = np.concatenate([scale * rotation(deg), np.array(shift)[:, None]], 1)
    pts = A.apply_transform(m, A.REFERENCE_5).astype(np.float64)
    return blob_image(pts, size, size + 20, sigma=2.5), pts + rng.normal(0, 0.3, pts.shape)


def test_landmarks_mode_puts_the_points_and_the_content_on_the_template():
    img, pts = face_from_template()
    aligner = A.FaceAligner(size=112, detector=None)
    face = aligner.align(img, landmarks=pts)
    assert face.method == "landmarks" and face.score == 1.0 and face.box is None
    assert face.image.shape == (112, 112, 3) and face.image.dtype == np.uint8
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    t = A.reference_landmarks(112)
    np.testing.assert_allclose(face.landmarks, t, atol=0.7)
    np.testing.assert_allclose(A.apply_transform(face.matrix, pts), face.landmarks, atol=1e-4)
    np.testing.assert_allclose(blob_centres(face.image, t, radius=5), t, atol=0.7)   # the pixels moved too
    # other sizes scale the template; the auto mode uses the given landmarks
    f2 = A.FaceAligner(size=64, detector=None).align(img, landmarks=pts, box=(1, 2, 3, 4), mode="auto")
    assert f2.method == "landmarks" and f2.box == (1.0, 2.0, 3.0, 4.0) and f2.image.shape == (64, 64, 3)
    np.testing.assert_allclose(f2.landmarks, A.reference_landmarks(64), atol=0.5)


def test_landmarks_mode_rejects_wrong_points():
    img, pts = face_from_template()
    aligner = A.FaceAligner(detector=None)
    with pytest.raises(ValueError, match="five_from_68"):
        aligner.align(img, landmarks=np.zeros((68, 2)))
    with pytest.raises(ValueError, match=r"\[5, 2\]"):
        aligner.align(img, landmarks=pts[:4])
    with pytest.raises(ValueError, match="needs landmarks"):
        aligner.align(img, mode="landmarks")
    with pytest.raises(ValueError, match="image 1: .*coincide"):  # e.g. a dataset's all-zero "missing" points
        aligner.align_batch([img, img], landmarks=[pts, np.zeros((5, 2))])


def test_bbox_mode_crops_the_enlarged_box_like_cd_fer():
    img = np.zeros((200, 300, 3), np.uint8)
    img[50:150, 100:180] = (200, 30, 30)                  # the "face": a red 80 x 100 box
    aligner = A.FaceAligner(size=120, detector=None)
    face = aligner.align(img, box=(100, 50, 180, 150), mode="bbox")
    assert face.method == "bbox" and face.score == 1.0 and face.box == (100.0, 50.0, 180.0, 150.0)
    np.testing.assert_allclose(face.landmarks, A.reference_landmarks(120))
    red = face.image[..., 0] > 100
    rows, cols = np.nonzero(red.any(1))[0], np.nonzero(red.any(0))[0]
    # 10 % margin each side: the box fills 100/120 of the crop, starting 10/120 in
    assert rows.min() == cols.min() == 10 and rows.max() == cols.max() == 109
    np.testing.assert_allclose(A.apply_transform(face.matrix, [[100, 50], [180, 150]]), [[10, 10], [110, 110]])
    # at the border the crop is clamped to the image (as CD-FER), not padded
    edge = aligner.align(img, box=(0, 0, 80, 100), mode="bbox")
    np.testing.assert_allclose(A.apply_transform(edge.matrix, [[0, 0], [88, 110]]), [[0, 0], [120, 120]])
    with pytest.raises(ValueError, match="needs a box"):
        aligner.align(img, mode="bbox")
    with pytest.raises(ValueError, match="x2 > x1"):
        aligner.align(img, box=(10, 10, 5, 20), mode="bbox")


def test_whole_mode_resizes_the_image():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    face = A.FaceAligner(size=96, detector=None).align(img, mode="whole")
    assert face.method == "whole" and face.box == (0.0, 0.0, 48.0, 48.0)
    np.testing.assert_array_equal(face.image, np.asarray(Image.fromarray(img).resize((96, 96), Image.BILINEAR)))
    np.testing.assert_allclose(face.landmarks, A.reference_landmarks(96))
    np.testing.assert_allclose(face.matrix, [[2, 0, 0], [0, 2, 0]])


def test_input_checks():
    aligner = A.FaceAligner(detector=None)
    with pytest.raises(ValueError, match="3 channels"):
        aligner.align(np.zeros((48, 48), np.uint8), mode="whole")
    with pytest.raises(ValueError, match="uint8"):
        aligner.align(np.zeros((48, 48, 3), np.float32), mode="whole")
    with pytest.raises(ValueError, match="unknown align mode"):
        aligner.align(np.zeros((48, 48, 3), np.uint8), mode="tight")
    with pytest.raises(RuntimeError, match="no detector"):
        aligner.align(np.zeros((48, 48, 3), np.uint8))
    with pytest.raises(KeyError, match="unknown face detector 'dlib'"):
        A.FaceAligner(detector="dlib")
    with pytest.raises(ValueError, match="2 landmark entries"):
        aligner.align_batch([np.zeros((8, 8, 3), np.uint8)], landmarks=[None, None])


def test_missing_facenet_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # makes `import facenet_pytorch` fail
    with pytest.raises(ImportError, match="--no-deps"):
        A.MTCNNDetector()
    # modes that need no detector still work
    face = A.FaceAligner().align(np.zeros((20, 20, 3), np.uint8), mode="whole")
    assert face.method == "whole"


# --- MTCNN -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def aligner():
    if not HAVE_FACENET:
        pytest.skip("facenet-pytorch is not installed (pip install --no-deps -r requirements/no-deps.txt)")
    return A.FaceAligner(size=112)


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data", reason="scikit-image (a dev dependency) ships the test photograph")
    return data.astronaut()


def tight_crop(img: np.ndarray, box, size: int, grey: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A FER2013-like crop of ``box`` resized to ``size`` (grey, as 3 channels), and the hand points in it."""
    c = Image.fromarray(img).crop(box).resize((size, size), Image.BICUBIC)
    if grey:
        c = c.convert("L").convert("RGB")
    s = size / (box[2] - box[0])
    return np.asarray(c), (ASTRONAUT_5 - np.array(box[:2])) * s


def worst_error(points: np.ndarray, truth: np.ndarray) -> float:
    """Largest point distance, in interocular distances of ``truth``."""
    return float(np.hypot(*(np.asarray(points) - truth).T).max() / np.hypot(*(truth[1] - truth[0])))


@needs_mtcnn
def test_mtcnn_weights_load_from_the_wheel_and_order_points_like_the_project():
    det = A.MTCNNDetector()
    assert not any(p.requires_grad for p in det.onet.parameters())
    rng = np.random.default_rng(0)
    assert all(len(d) == 0 for d in det.detect(rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)))
    assert [len(d) for d in det.detect(np.zeros((1, 8, 8, 3), np.uint8))] == [0]


@needs_mtcnn
def test_no_face_gives_none(aligner):
    rng = np.random.default_rng(0)
    blank = np.full((120, 160, 3), 128, np.uint8)
    noise = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    tiny = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    assert aligner.align(blank) is None and aligner.align(noise, mode="mtcnn") is None
    assert aligner.align_batch([blank, noise, tiny, blank]) == [None, None, None, None]


@needs_mtcnn
def test_astronaut_face_and_its_five_points(aligner, astronaut):
    face = aligner.align(astronaut)
    assert face is not None and face.method == "mtcnn" and face.score > 0.99
    x1, y1, x2, y2 = face.box
    assert x1 < ASTRONAUT_5[:, 0].min() and x2 > ASTRONAUT_5[:, 0].max()
    assert y1 < ASTRONAUT_5[:, 1].min() and y2 > ASTRONAUT_5[:, 1].max()
    assert 70 < x2 - x1 < 130
    src = A.apply_transform(A.invert_transform(face.matrix), face.landmarks)  # the detected points, in the photo
    # each detected point within 0.1 interocular distance (~4 px) of the hand-checked eye/nose/mouth corner
    assert worst_error(src, ASTRONAUT_5) < 0.1, np.round(src, 1)
    assert src[0, 0] < src[2, 0] < src[1, 0] and src[3, 0] < src[2, 0] < src[4, 0]  # LANDMARKS order
    # the aligned face has its eyes on the template rows, and so do the hand-checked eyes carried by the warp
    t = A.reference_landmarks(112)
    # (her broad smile keeps the mouth ~5 px off the template's: a similarity fits the face, not the expression)
    np.testing.assert_allclose(face.landmarks[:2], t[:2], atol=3.0)
    np.testing.assert_allclose(face.landmarks, t, atol=7.0)
    hand = A.apply_transform(face.matrix, ASTRONAUT_5)
    np.testing.assert_allclose(hand[:2], t[:2], atol=3.0)
    np.testing.assert_allclose(hand, t, atol=7.0)
    # and the pupils (darkest spots) of the aligned image lie there
    grey = face.image.astype(float).mean(2)
    for x, y in t[:2]:
        r0, c0 = int(y) - 6, int(x) - 6
        win = grey[r0:r0 + 13, c0:c0 + 13]
        i, j = np.unravel_index(np.argmin(win), win.shape)
        assert np.hypot(c0 + j + 0.5 - x, r0 + i + 0.5 - y) < 4.0


@needs_mtcnn
def test_mirrored_astronaut_keeps_left_as_smaller_x(aligner, astronaut):
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    face = aligner.align(flipped)
    src = A.apply_transform(A.invert_transform(face.matrix), face.landmarks)
    w = astronaut.shape[1]
    truth = np.stack([w - ASTRONAUT_5[:, 0], ASTRONAUT_5[:, 1]], 1)[list(FLIP_PERMUTATION)]
    assert worst_error(src, truth) < 0.1, np.round(src, 1)


@needs_mtcnn
@pytest.mark.parametrize("box,size", [((178, 72, 272, 166), 48), ((185, 85, 265, 165), 48),
                                      ((185, 85, 265, 165), 100), ((165, 55, 285, 175), 64)])
def test_tight_small_crops_are_found_with_points_in_place(aligner, astronaut, box, size):
    crop, truth = tight_crop(astronaut, box, size)
    face = aligner.align(crop)
    assert face is not None and face.method == "mtcnn"
    src = A.apply_transform(A.invert_transform(face.matrix), face.landmarks)
    assert worst_error(src, truth) < 0.16, np.round(src, 1)


@needs_mtcnn
def test_batch_agrees_with_one_by_one(aligner, astronaut):
    rng = np.random.default_rng(1)
    crops = [tight_crop(astronaut, (178, 72, 272, 166), 48)[0], tight_crop(astronaut, (185, 85, 265, 165), 48)[0],
             tight_crop(astronaut, (170, 60, 280, 170), 48, grey=False)[0]]
    images = [astronaut, crops[0], np.full((48, 48, 3), 90, np.uint8), crops[1],
              np.ascontiguousarray(astronaut[:, ::-1]), crops[2], rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)]
    small = A.FaceAligner(size=112, batch_size=2)  # several chunks of the 48 x 48 group
    batch = small.align_batch(images)
    single = [aligner.align(im) for im in images]
    assert [f is None for f in batch] == [f is None for f in single] == [False, False, True, False, False, False, True]
    for b, s in zip(batch, single):
        if b is not None:
            assert b.method == s.method == "mtcnn" and abs(b.score - s.score) < 1e-3
            np.testing.assert_allclose(b.matrix, s.matrix, atol=1e-3)
            assert np.abs(b.image.astype(int) - s.image.astype(int)).max() <= 2
    again = small.align_batch(images)
    for a, b in zip(again, batch):  # deterministic
        if a is not None:
            np.testing.assert_array_equal(a.image, b.image)


@needs_mtcnn
def test_given_box_picks_the_face_inside_it(aligner, astronaut):
    face = aligner.align(astronaut, box=(170, 55, 280, 180), mode="mtcnn")
    assert face is not None and face.method == "mtcnn"
    src = A.apply_transform(A.invert_transform(face.matrix), face.landmarks)
    assert worst_error(src, ASTRONAUT_5) < 0.1
    assert aligner.align(astronaut, box=(380, 380, 500, 500)) is None  # a box with no face in it: listed as None
    dets = aligner.detect([astronaut, astronaut], boxes=[None, (170, 55, 280, 180)])
    assert all(len(d) >= 1 and d.scores[0] > 0.99 for d in dets)
    assert all(np.all(np.diff(d.scores) <= 0) for d in dets)  # best first


@needs_mtcnn
def test_large_images_are_downscaled_for_detection(astronaut):
    big = np.asarray(Image.fromarray(astronaut).resize((1536, 1536), Image.BICUBIC))
    face = A.FaceAligner(max_detect_side=800).align(big)
    src = A.apply_transform(A.invert_transform(face.matrix), face.landmarks)
    assert worst_error(src, ASTRONAUT_5 * 3) < 0.1
