"""Dataset spec strings and the dataset registry.

A spec is one string a CLI flag or a papermill parameter can carry::

    synth:lab
    synth:wild?n=4000&size=112
    rafdb:/data/RAF-DB/basic?split=train
    imagefolder:mine            # relative paths resolve under $FER_LAB_DATA

A dataset factory is registered under the part before the colon and called as
``factory(arg, split=..., **params) -> FaceArrays``. Parameter values are parsed as int, float or bool where they
look like one.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl

from fer_lab.data.store import FaceArrays
from fer_lab.registry import Registry

DatasetFactory = Callable[..., FaceArrays]
DATASETS: Registry[DatasetFactory] = Registry("dataset")

SPLITS = ("train", "test", "val", "all")


class SpecError(ValueError):
    """A malformed dataset spec; the message names the spec and the problem."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    arg: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def split(self) -> str | None:
        return self.params.get("split")

    def with_params(self, **params: Any) -> "DatasetSpec":
        return replace(self, params={**self.params, **params})

    def for_split(self, split: str) -> "DatasetSpec":
        """This spec with ``split`` set, unless the spec already pins one (then it is kept)."""
        return self if "split" in self.params else self.with_params(split=split)

    def __str__(self) -> str:
        q = "&".join(f"{k}={_fmt(v)}" for k, v in self.params.items())
        return f"{self.name}:{self.arg}" + (f"?{q}" if q else "")


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def json_value(text: str) -> Any:
    """``text`` read as JSON where it parses (``false``, ``2``, ``[16, 32]``), else the string itself: the values of
    command-line ``key=value`` options and of backbone spec options."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_query(query: str, spec: str, kind: str = "dataset") -> dict[str, str]:
    """The ``key=value&...`` part of a spec as raw (URL-decoded) strings; raises :class:`SpecError` naming the
    ``kind`` of spec, the spec and the piece that is not ``key=value`` or a key given twice."""
    params: dict[str, str] = {}
    for piece in query.split("&") if query else ():
        key, eq, _ = piece.partition("=")
        if not key or not eq:
            raise SpecError(f"{kind} spec {spec!r}: parameter {piece!r} is not key=value")
        if key in params:
            raise SpecError(f"{kind} spec {spec!r}: parameter {key!r} given twice")
        params[key] = dict(parse_qsl(piece, keep_blank_values=True))[key]
    return params


def parse_spec(spec: str | DatasetSpec) -> DatasetSpec:
    """Parse ``name:arg?key=value&...``; raises :class:`SpecError` with the reason."""
    if isinstance(spec, DatasetSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"dataset spec must be a non-empty string like 'synth:lab', got {spec!r}")
    text = spec.strip()
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise SpecError(f"dataset spec {spec!r} has no 'name:' prefix (e.g. 'synth:lab', 'rafdb:/data/RAF-DB')")
    arg, _, query = rest.partition("?")
    params = {k: _value(v) for k, v in parse_query(query, spec).items()}
    if "split" in params and params["split"] not in SPLITS:
        raise SpecError(f"dataset spec {spec!r}: split {params['split']!r} is not one of {', '.join(SPLITS)}")
    return DatasetSpec(name.strip().lower(), arg, params)


_SPEC_START = re.compile(r"^\s*[A-Za-z][\w-]*:")


def split_specs(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A comma-separated list of specs, split only where a new ``name:`` begins, so a knob's ``lo,hi`` value stays
    inside its spec: ``'synth:lab?blur=0,1,synth:wild'`` -> ``('synth:lab?blur=0,1', 'synth:wild')``.
    A tuple or list is returned as a tuple unchanged."""
    if not isinstance(text, str):
        return tuple(text)
    specs: list[str] = []
    for piece in text.split(","):
        if not piece.strip():
            continue
        if specs and not _SPEC_START.match(piece):
            specs[-1] += "," + piece
        else:
            specs.append(piece.strip())
    return tuple(specs)


def resolve_path(arg: str) -> Path:
    """A dataset path: absolute as given, relative ones under ``$FER_LAB_DATA`` (or the working directory)."""
    p = Path(os.path.expanduser(arg))
    if not p.is_absolute():
        p = Path(os.environ.get("FER_LAB_DATA", ".")) / p
    return p


def load_dataset(spec: str | DatasetSpec, split: str | None = None, defaults: dict[str, Any] | None = None
                 ) -> FaceArrays:
    """Build the dataset a spec names; ``split`` applies unless the spec pins its own.

    ``defaults`` are parameters (e.g. ``n``, ``size`` from a training profile) given to the factory when it
    accepts them and the spec does not set them itself.
    """
    s = parse_spec(spec)
    if split is not None:
        s = s.for_split(split)
    _ensure_builtin_datasets()
    if defaults:
        names = inspect.signature(DATASETS.get(s.name)).parameters
        s = s.with_params(**{k: v for k, v in defaults.items() if k in names and k not in s.params})
    factory = DATASETS.get(s.name)
    params = dict(s.params)
    sig = inspect.signature(factory)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        accepted = [n for n, p in list(sig.parameters.items())[1:] if p.kind is not p.VAR_POSITIONAL]
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise SpecError(
                f"dataset spec {str(s)!r}: unknown parameter(s) {', '.join(unknown)}; "
                f"{s.name} accepts {', '.join(accepted)}"
            )
    data = factory(s.arg, **params)
    data.meta.setdefault("spec", str(s))
    return data


def _ensure_builtin_datasets() -> None:
    """Import the modules that register the built-in datasets (kept lazy to keep ``import fer_lab`` light)."""
    import fer_lab.data.digits  # noqa: F401  (the known-answer digits -> MNIST-M shift)
    import fer_lab.data.synth  # noqa: F401
    from fer_lab.data.prepare import register_reader_datasets

    register_reader_datasets()  # one factory per reader in fer_lab/data/readers/ (rafdb:, fer2013:, ...)
