import numpy as np
import pytest
import torch
from torch import nn

from fer_lab.evaluate import classification_report, eval_mode
from fer_lab.labels import EXPRESSIONS


def test_report_on_a_constructed_confusion():
    # truth:  0 0 0 1 1 2, unknown (-1) rows are left out; class 3..6 absent
    labels = np.array([0, 0, 0, 1, 1, 2, -1, -1])
    preds = np.array([0, 0, 1, 1, 0, 2, 5, 0])
    r = classification_report(preds, labels)
    assert r["n"] == 6
    assert r["acc"] == pytest.approx(4 / 6)
    assert r["per_class"][EXPRESSIONS[0]] == pytest.approx(2 / 3)
    assert r["per_class"][EXPRESSIONS[1]] == pytest.approx(1 / 2)
    assert r["per_class"][EXPRESSIONS[2]] == 1.0
    assert all(r["per_class"][EXPRESSIONS[c]] is None for c in range(3, 7))   # absent classes stay out of the mean
    assert r["mean_class_acc"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    confusion = np.array(r["confusion"])
    assert confusion.sum() == 6 and confusion[0, 1] == 1 and confusion[1, 0] == 1 and np.trace(confusion) == 4


def test_eval_mode_restores_the_mode_also_on_error():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    with eval_mode(net) as m:
        assert m is net and not net.training and not net[1].training
    assert net.training and net[1].training
    with pytest.raises(RuntimeError):
        with eval_mode(net):
            raise RuntimeError("boom")
    assert net.training
    net.eval()
    with eval_mode(net):
        pass
    assert not net.training  # a module that was in eval mode stays there
    x = torch.ones(1, 2)
    with eval_mode(net):
        assert torch.equal(net(x), net(x))  # dropout off
