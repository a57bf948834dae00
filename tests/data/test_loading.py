import numpy as np
import torch

from fer_lab.data.loading import Augment, BatchStream, FaceTensors, concat_batches, iterate
from fer_lab.data.store import FaceArrays
from fer_lab.labels import FLIP_PERMUTATION


def _dots(n=8, size=48, seed=0):
    """Images with one bright dot per landmark (distinct channel intensities), and those landmarks."""
    rng = np.random.default_rng(seed)
    layout = np.array([[14, 16], [34, 16], [24, 26], [16, 36], [32, 36]], np.float32) * (size / 48)
    lms = layout + rng.integers(-2, 3, (n, 5, 2))  # dots at least 10 px apart
    lms = (np.floor(lms) + 0.5).astype(np.float32)  # pixel centres
    img = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        for k in range(5):
            x, y = int(lms[i, k, 0]), int(lms[i, k, 1])
            img[i, y - 1:y + 2, x - 1:x + 2] = 255
    return FaceArrays(img, np.arange(n) % 7, lms, meta={"name": "dots"})


def _brightest_near(img, pt, r=5):
    x0, y0 = int(pt[0]), int(pt[1])
    ys, xs = slice(max(y0 - r, 0), y0 + r + 1), slice(max(x0 - r, 0), x0 + r + 1)
    w = img[:, ys, xs].mean(0)
    yy, xx = torch.meshgrid(torch.arange(w.shape[0]) + ys.start + 0.5, torch.arange(w.shape[1]) + xs.start + 0.5,
                            indexing="ij")
    return float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())


def test_augment_moves_landmarks_with_pixels():
    data = FaceTensors(_dots(), 48)
    aug = Augment(flip=0.5, rotate=20, scale=0.1, translate=0.1, brightness=0, contrast=0)
    b = data.batch(torch.arange(8), aug, torch.Generator().manual_seed(3))
    errs = []
    for i in range(8):
        for k in range(5):
            p = b["landmarks"][i, k]
            if (p < 6).any() or (p > 42).any():
                continue
            cx, cy = _brightest_near(b["images"][i], p, r=3)
            errs.append(max(abs(cx - float(p[0])), abs(cy - float(p[1]))))
    assert len(errs) > 20, len(errs)
    assert max(errs) < 0.3, sorted(errs)[-5:]


def test_flip_swaps_left_right_rows():
    data = FaceTensors(_dots(n=4), 48)
    aug = Augment(flip=1.0, rotate=0, scale=0, translate=0, brightness=0, contrast=0)
    b = data.batch(torch.arange(4), aug, torch.Generator().manual_seed(0))
    expected = data.landmarks.clone()
    expected[..., 0] = 48 - expected[..., 0]
    torch.testing.assert_close(b["landmarks"], expected[:, list(FLIP_PERMUTATION)])
    torch.testing.assert_close(b["images"], data.batch(torch.arange(4))["images"].flip(-1))


def test_flip_mirrors_the_pose():
    """A flipped face looks the other way: yaw and roll change sign, pitch does not; unflipped rows keep theirs."""
    arrays = _dots(n=6)
    arrays.pose = np.array([[30, 10, 5], [-45, 0, -8], [10, -20, 0], [np.nan] * 3, [60, 5, 2], [0, 0, 0]], np.float32)
    data = FaceTensors(arrays, 48)
    flipped = data.batch(torch.arange(6), Augment(flip=1.0, rotate=0), torch.Generator().manual_seed(0))
    mirrored = data.pose * torch.tensor([-1.0, 1.0, -1.0])
    torch.testing.assert_close(flipped["pose"], mirrored, equal_nan=True)
    kept = data.batch(torch.arange(6), Augment(flip=0.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(kept["pose"], data.pose, equal_nan=True)
    half = data.batch(torch.arange(6), Augment(flip=0.5, rotate=0, scale=0, translate=0, brightness=0, contrast=0),
                      torch.Generator().manual_seed(1))
    was_flipped = ~torch.isclose(half["landmarks"], data.landmarks).all(-1).all(-1)   # a flip moves every dot
    assert 0 < int(was_flipped.sum()) < 6
    torch.testing.assert_close(half["pose"], torch.where(was_flipped[:, None], mirrored, data.pose), equal_nan=True)


def test_resize_scales_landmarks():
    data = FaceTensors(_dots(n=2, size=48), 32)
    assert data.images.shape == (2, 3, 32, 32)
    torch.testing.assert_close(data.landmarks, torch.from_numpy(_dots(n=2).landmarks) * (32 / 48))


def test_stream_is_a_pure_function_of_step():
    data = FaceTensors(_dots(n=20), 48)
    a = BatchStream(data, 4, seed=1, stream_id=0, augment=Augment.weak())
    b = BatchStream(data, 4, seed=1, stream_id=0, augment=Augment.weak())
    later = [a.batch(s) for s in range(12)]
    torch.testing.assert_close(b.batch(9)["images"], later[9]["images"])  # jump straight to step 9
    c = BatchStream(data, 4, seed=2, stream_id=0, augment=Augment.weak())
    assert not torch.equal(c.batch(0)["index"], later[0]["index"]) or not torch.equal(
        c.batch(0)["images"], later[0]["images"])
    # one epoch (5 batches) visits every sample once
    seen = torch.cat([later[s]["index"] for s in range(5)])
    assert sorted(seen.tolist()) == list(range(20))


def test_strong_view_and_batch_fields():
    data = FaceTensors(_dots(n=8), 48, domain=3)
    s = BatchStream(data, 4, 0, 0, Augment.weak(), Augment.strong())
    b = s.batch(0)
    assert set(b) >= {"images", "labels", "landmarks", "domain", "index", "pose", "subject", "strong",
                      "strong_landmarks"}
    assert b["images"].dtype == torch.float32 and 0 <= b["images"].min() and b["images"].max() <= 1
    assert (b["domain"] == 3).all() and b["strong"].shape == b["images"].shape


def test_iterate_and_concat():
    data = FaceTensors(_dots(n=10), 48)
    batches = list(iterate(data, 4))
    assert [len(b["labels"]) for b in batches] == [4, 4, 2]
    cat = concat_batches(batches)
    assert cat["index"].tolist() == list(range(10))
