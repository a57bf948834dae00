"""SynthFER's personalised sets (``subject=``) and the pose-swap truth (``render_at_pose``), and that neither changes
any face SynthFER drew before they existed."""

import hashlib
import json

import numpy as np
import pytest
import torch

from fer_lab.data.loading import BatchStream, FaceTensors
from fer_lab.data.spec import load_dataset
from fer_lab.data.synth import (RENDERER_VERSION, _CHUNK, _cache_key, make_synthfer, parse_subjects, posed_faces,
                                render_at_pose, resolve_domain, sample_faces)

#: sha256 of images, labels, landmarks, pose, subject of three small sets, recorded with renderer version 4 (one
#: thread; the same with two). A change of the drawing must bump RENDERER_VERSION and record these again.
RECORDED = {
    ("lab", 12, 32, 0, "train"): "66c51541763b3e9bb2e0a494c360fc12e70f322817ce78bab48a83346430a54c",
    ("wild", 12, 48, 3, "test"): "22686292d1bc89a7d53282fa3cc4117f8cc3ab62d3518cdf0dd9a5971a039281",
    ("lowres", 8, 32, 1, "val"): "5c39608a76105e8efedb50f8c48fee32f0bd508601597bc544348ba4c78d132b",
}
IDENTITY_KEYS = ("face_scale", "eye_d", "nose_p", "mouth_w", "skin", "hair", "hairline")


def digest(d) -> str:
    h = hashlib.sha256()
    for key in ("images", "labels", "landmarks", "pose", "subject"):
        h.update(np.ascontiguousarray(getattr(d, key)).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("args", list(RECORDED), ids=lambda a: f"{a[0]}-{a[4]}")
def test_existing_faces_are_unchanged(args):
    domain, n, size, seed, split = args
    assert RENDERER_VERSION == 4
    d = make_synthfer(domain, n=n, size=size, seed=seed, split=split, cache=False)
    assert digest(d) == RECORDED[args]
    assert digest(make_synthfer(domain, n=n, size=size, seed=seed, split=split, cache=False, subject=None)) == RECORDED[args]
    assert "subjects" not in d.meta


def test_cache_keys_of_existing_sets_are_unchanged():
    dom = resolve_domain("wild")
    blob = json.dumps({"v": RENDERER_VERSION, "chunk": _CHUNK, "knobs": dom.knobs(), "n": 40, "size": 64, "seed": 2,
                       "split": "train"}, sort_keys=True)
    assert _cache_key(dom, 40, 64, 2, "train") == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert _cache_key(dom, 40, 64, 2, "train", (3,)) != _cache_key(dom, 40, 64, 2, "train")


def test_one_person_in_every_split():
    tr = make_synthfer("wild", n=20, size=32, split="train", cache=False, subject=3)
    te = make_synthfer("wild", n=10, size=32, split="test", cache=False, subject=3)
    assert len(set(tr.subject.tolist())) == 1 and set(tr.subject.tolist()) == set(te.subject.tolist())
    assert tr.meta["subjects"] == [3]
    assert not np.array_equal(tr.pose[:10], te.pose)                       # other faces of the same person
    a = sample_faces(resolve_domain("wild"), 20, 0, "train", (3,))
    b = sample_faces(resolve_domain("wild"), 10, 0, "test", (3,))
    c = sample_faces(resolve_domain("wild"), 10, 0, "test", (4,))
    for key in IDENTITY_KEYS:
        assert np.all(a[key] == a[key][0]) and np.array_equal(a[key][0], b[key][0]), key
    assert not np.array_equal(b["face_scale"], c["face_scale"])
    # person 3 is subject 3 of the held-out (test) pool, never one of the domain's training people
    pool = sample_faces(resolve_domain("wild"), 8, 0, "test")
    k = int(np.flatnonzero(pool["subject_k"] == 3)[0])
    assert np.array_equal(pool["face_scale"][k], a["face_scale"][0])
    default_train = make_synthfer("wild", n=40, size=32, split="train", cache=False)
    assert not set(default_train.subject.tolist()) & set(tr.subject.tolist())


def test_pooled_subjects_and_bad_values():
    d = make_synthfer("wild", n=30, size=32, split="train", cache=False, subject="0,1,2")
    ids, counts = np.unique(d.subject, return_counts=True)
    assert len(ids) == 3 and counts.tolist() == [10, 10, 10]
    assert parse_subjects(4) == (4,) and parse_subjects("2,0") == (2, 0) and parse_subjects(None) is None
    for bad, phrase in (("x", "comma-separated"), ("-1", "integers"), ("1,1", "twice"), ("1.5", "integers")):
        with pytest.raises(ValueError, match=phrase):
            parse_subjects(bad)


def test_per_subject_target_batches_hold_one_subject(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path))
    arrays = load_dataset("synth:wild?subject=5&n=24&size=32", split="train")
    stream = BatchStream(FaceTensors(arrays, 32, domain=1), batch_size=8, seed=0, stream_id=1000)
    for step in range(4):
        assert len(set(stream.batch(step)["subject"].tolist())) == 1
    pooled = load_dataset("synth:wild?subject=5,6&n=24&size=32", split="train")
    assert len(set(pooled.subject.tolist())) == 2
    assert set(load_dataset("synth:wild?subject=5&n=8&size=32", split="test").subject.tolist()) == \
        set(arrays.subject.tolist())


def test_pose_swap_truth_keeps_person_and_expression():
    n, size = 12, 32
    d = make_synthfer("lab", n=n, size=size, split="test", cache=False, subject=2, yaw="0,60")
    i, j = 0, int(np.argmax(np.abs(d.pose[:, 0] - d.pose[0, 0])))          # two faces of the person, far poses
    assert d.subject[i] == d.subject[j]
    # at its own pose the truth is the stored face, bit for bit
    own, own_lm = render_at_pose("lab", [i, j], d.pose[[i, j]], n=n, size=size, split="test", subject=2, yaw="0,60")
    np.testing.assert_array_equal(own, d.images[[i, j]])
    np.testing.assert_array_equal(own_lm, d.landmarks[[i, j]])
    # at j's pose: the draws of face i with only the pose replaced
    s0 = sample_faces(resolve_domain("lab", yaw="0,60"), n, 0, "test", (2,))
    s1 = posed_faces("lab", [i], d.pose[[j]], n=n, split="test", subject=2, yaw="0,60")
    for key in ("au", "truth", "labels", "intensity", "light", "bg_plain", "scale", *IDENTITY_KEYS):
        np.testing.assert_array_equal(s1[key], s0[key], err_msg=key)
    np.testing.assert_allclose(np.stack([s1["yaw"], s1["pitch"], s1["roll"]], 1)[i], d.pose[j], rtol=1e-6)
    np.testing.assert_array_equal(s1["yaw"][1:], s0["yaw"][1:])
    img, lm = render_at_pose("lab", [i], d.pose[[j]], n=n, size=size, split="test", subject=2, yaw="0,60")
    assert img.shape == (1, size, size, 3) and not np.array_equal(img[0], d.images[i])
    # the nose moves with the yaw (positive yaw turns the face towards image right)
    nose_offset = lambda p: p[2, 0] - (p[0, 0] + p[1, 0]) / 2  # noqa: E731
    turn = np.sign(d.pose[j, 0] - d.pose[i, 0])
    assert turn * (nose_offset(lm[0]) - nose_offset(d.landmarks[i])) > 0.5
    with pytest.raises(ValueError, match="out of range"):
        posed_faces("lab", [n], [[0, 0, 0]], n=n, split="test")
