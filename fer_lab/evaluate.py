"""Evaluation: accuracy, per-class accuracy, confusion matrix, and result tables."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fer_lab.data.loading import FaceTensors, iterate, to_device
from fer_lab.labels import EXPRESSIONS, NUM_CLASSES


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block; its train/eval mode comes back afterwards, also on an error."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def predict_all(method, data: FaceTensors, batch_size: int = 256, device: str | torch.device = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for every sample of ``data`` (model in eval mode, restored afterwards)."""
    with eval_mode(method):
        logits = [method.predict(to_device(b, device)).float().cpu() for b in iterate(data, batch_size)]
    return torch.cat(logits), data.labels.clone()


def classification_report(predictions: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                          num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """Overall accuracy, mean per-class accuracy, per-class accuracy and confusion (rows = truth).

    Rows with an unknown label (-1) are left out. Accuracies are fractions in [0, 1]; a class with no test
    sample has per-class accuracy ``None`` and does not enter the mean.
    """
    pred = np.asarray(predictions).reshape(-1)
    true = np.asarray(labels).reshape(-1)
    keep = true >= 0
    pred, true = pred[keep], true[keep]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    support = confusion.sum(1)
    per_class = [float(confusion[i, i] / support[i]) if support[i] else None for i in range(num_classes)]
    present = [a for a in per_class if a is not None]
    return {
        "n": int(len(true)),
        "acc": float((pred == true).mean()) if len(true) else float("nan"),
        "mean_class_acc": float(np.mean(present)) if present else float("nan"),
        "per_class": dict(zip(EXPRESSIONS[:num_classes], per_class)),
        "confusion": confusion.tolist(),
    }


def evaluate(method, data: FaceTensors, batch_size: int = 256, device: str | torch.device = "cpu") -> dict[str, Any]:
    logits, labels = predict_all(method, data, batch_size, device)
    return classification_report(logits.argmax(1), labels, logits.shape[1])


def format_table(rows: Sequence[dict[str, Any]], columns: Iterable[str] | None = None, floatfmt: str = "{:.1f}",
                 percent: bool = True) -> str:
    """A plain-text (Markdown-compatible) table; floats in [0, 1] shown as percentages."""
    rows = list(rows)
    if not rows:
        return "(no results)"
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return floatfmt.format(100 * v if percent else v)
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


# -- domain generalisation ------------------------------------------------------------------------------------------
def domain_name(spec: str) -> str:
    """``synth:wild?n=400`` -> ``synth:wild`` (the table's column / row name)."""
    return spec.split("?", 1)[0]


def dg_summary(final: Mapping[str, Mapping[str, Any]], sources: Sequence[str],
               aliases: Mapping[str, str] | None = None, metric: str = "acc") -> dict[str, Any]:
    """Domain-generalisation view of one run's final reports (``RunResult.final`` / ``results.json["final"]``).

    Each evaluation set is *seen* when it is one of the training ``sources`` (compared without ``?`` parameters)
    and *unseen* otherwise; ``aliases`` renames report keys first (e.g. ``{"target": "synth:wild"}``; the trainer
    files the target's report under ``target``). Reports of the same domain under two keys are kept once.

    Returns ``{"per_domain": {domain: value}, "seen": [...], "unseen": [...], "mean_unseen": float}`` (NaN when
    nothing is unseen), domains in report order, seen ones first.
    """
    aliases = dict(aliases or {})
    src = {domain_name(s) for s in sources}
    per: dict[str, float] = {}
    for key, report in final.items():
        name = domain_name(aliases.get(key, key))
        per.setdefault(name, float(report[metric]))
    seen = [d for d in per if d in src]
    unseen = [d for d in per if d not in src]
    per = {d: per[d] for d in seen + unseen}
    mean = float(np.mean([per[d] for d in unseen])) if unseen else float("nan")
    return {"per_domain": per, "seen": seen, "unseen": unseen, "mean_unseen": mean}


def dg_rows(final: Mapping[str, Mapping[str, Any]], sources: Sequence[str],
            aliases: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Per-domain rows (domain, role, accuracy, mean class accuracy) and a last row with the mean over the unseen
    domains, for :func:`format_table`."""
    acc = dg_summary(final, sources, aliases, "acc")
    mca = dg_summary(final, sources, aliases, "mean_class_acc")
    rows: list[dict[str, Any]] = [{"domain": d, "role": "source (seen)" if d in acc["seen"] else "unseen",
                                   "acc": acc["per_domain"][d], "mean class": mca["per_domain"][d]}
                                  for d in acc["per_domain"]]
    rows.append({"domain": "mean over unseen", "role": f"{len(acc['unseen'])} domains", "acc": acc["mean_unseen"],
                 "mean class": mca["mean_unseen"]})
    return rows


def dg_table_rows(runs: Mapping[str, Mapping[str, Mapping[str, Any]]], sources: Sequence[str],
                  aliases: Mapping[str, str] | None = None, metric: str = "acc") -> list[dict[str, Any]]:
    """The paper's layout (Generalizable FER, Table 1): one row per method, the source column(s) first, then each
    unseen domain, then the mean over the unseen ones. ``runs`` maps a method name to its final reports."""
    rows = []
    for name, final in runs.items():
        s = dg_summary(final, sources, aliases, metric)
        rows.append({"method": name, **{f"{d} (source)" if d in s["seen"] else d: v
                                        for d, v in s["per_domain"].items()}, "mean unseen": s["mean_unseen"]})
    return rows
