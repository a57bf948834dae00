"""The known-answer digits -> MNIST-M shift: deterministic, disjoint halves and splits, the blend recipe."""

import numpy as np
import pytest

from fer_lab.data import digits as dg
from fer_lab.data.spec import load_dataset


def test_a_spec_gives_the_same_arrays_every_time_and_seeds_differ():
    a = load_dataset("digits:mnistm?n=64&size=32&seed=3", split="train")
    b = load_dataset("digits:mnistm?n=64&size=32&seed=3", split="train")
    c = load_dataset("digits:mnistm?n=64&size=32&seed=4", split="train")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (64, 32, 32, 3) and a.images.dtype == np.uint8 and a.landmarks.shape == (64, 5, 2)
    assert set(np.unique(a.labels)) <= set(range(7))


def test_source_and_target_halves_and_their_splits_are_disjoint():
    rows = {(d, s): set(dg._indices(d, s)) for d in ("mnist", "mnistm") for s in ("train", "val", "test")}
    everything = set().union(*rows.values())
    assert sum(len(r) for r in rows.values()) == len(everything)       # no digit drawing in two places
    assert len(everything) >= len(dg._digits()[1]) - 2                 # and (almost) every one used
    assert abs(len(rows["mnist", "train"]) - len(rows["mnistm", "train"])) <= 1


def test_the_target_is_the_source_recipe_blended_with_photo_patches():
    src = dg.make_digits("mnist", 16, 32, 0, "test")
    tgt = dg.make_digits("mnistm", 16, 32, 0, "test")
    assert np.all(src.images[..., 0] == src.images[..., 2])            # grey white-on-black digits
    assert src.images.mean() < 80 and (src.images.max(axis=(1, 2, 3)) > 200).all()
    assert tgt.images.std(axis=(1, 2)).mean() > 20                      # coloured, textured backgrounds
    assert not np.all(tgt.images[..., 0] == tgt.images[..., 2])
    assert len(dg._photos()) == len(dg.PHOTOS) >= 10


@pytest.mark.parametrize("call, message", [
    (lambda: dg.make_digits("svhn", 8, 32, 0, "train"), "digits domain 'svhn' is not one of mnist, mnistm"),
    (lambda: dg.make_digits("mnist", 8, 32, 0, "all"), "digits split 'all' is not one of train, val, test"),
    (lambda: dg.make_digits("mnist", 0, 32, 0, "train"), "n must be positive"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
