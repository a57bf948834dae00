"""From a dataset a user downloaded to a cached store of aligned faces: scan, align, cache, check.

A real dataset goes through three steps, each usable on its own:

1. **scan** (:func:`scan_spec`): the dataset's reader (``fer_lab.data.readers``) lists one
   :class:`~fer_lab.data.readers.base.Record` per face of the requested split, with its label in
   :data:`fer_lab.labels.EXPRESSIONS` order and whatever geometry the dataset ships, and reports what it dropped;
2. **prepare** (:func:`prepare`): every record is decoded and aligned by a
   :class:`fer_lab.data.align.FaceAligner` into a ``size x size`` uint8 face with its five landmarks in the
   aligned pixels, and the result is written as a :class:`~fer_lab.data.store.FaceArrays` store;
3. **load** (the dataset factories registered here): a spec such as ``rafdb:/data/RAF-DB/basic?split=train``
   prepares once into ``$FER_LAB_CACHE/<dataset>/<key>`` and afterwards loads the store memory-mapped, so the
   trainer and the notebooks use a real dataset exactly as they use SynthFER.

Alignment mode
--------------
``align=auto`` (the default) uses the mode the reader names for its dataset (:attr:`Manifest.align`):
``landmarks`` where the dataset ships five points, ``bbox`` where it ships face boxes, ``whole`` for tight face
crops (FER2013's 48x48) and ``mtcnn`` for photos with no geometry. A record that lacks what its mode needs falls
back per face (``landmarks`` -> ``bbox`` -> ``mtcnn``); ``meta["methods"]`` counts the mode each face got.
An explicit ``align=`` applies that mode to every face (still falling back where a face lacks landmarks or box).

Nothing is dropped silently
---------------------------
* the reader's drops (contempt, unknown, missing files, broken rows, ...) are kept in ``meta["dropped"]``;
* images that cannot be decoded, or whose given geometry cannot be used (coinciding landmarks, an empty box),
  are skipped and listed with the reason in ``meta["unreadable"]`` and in ``unreadable.txt`` inside the store;
* images where the detector finds no face are listed in ``meta["no_face"]`` and ``no_face.txt``.

Resuming
--------
Records are processed in chunks; each finished chunk is written atomically to ``<out>.partial/`` next to the
store. A killed prepare, run again with the same arguments, keeps the finished chunks (the plan file checks that
the records and settings are the same) and continues with the first missing one. The final store is written
atomically (:meth:`FaceArrays.save`) and the partial folder removed.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import pkgutil
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from fer_lab.data.readers.base import READERS, Manifest, Record, ReaderError, read_image
from fer_lab.data.spec import DATASETS, SPLITS, DatasetSpec, SpecError, parse_spec, resolve_path
from fer_lab.data.store import FaceArrays
from fer_lab.labels import NUM_LANDMARKS

__all__ = [
    "ALIGN_MODES", "PREPARE_VERSION", "PrepareResult", "cache_dir", "check", "default_cache_root", "load_prepared",
    "prepare", "reader_options", "register_reader_datasets", "scan_spec",
]

#: Alignment modes accepted by ``--align`` / ``align=`` (see :class:`fer_lab.data.align.FaceAligner`).
ALIGN_MODES: tuple[str, ...] = ("auto", "landmarks", "mtcnn", "bbox", "whole")

#: Bump whenever prepared stores change (alignment, layout, meta): it is part of the cache key.
PREPARE_VERSION = 1

#: Spec parameters the prepare step itself takes; everything else goes to the reader.
_PREPARE_PARAMS = ("split", "size", "align", "cache", "device")

_FALLBACK = {"landmarks": "bbox", "bbox": "mtcnn"}


class Aligner(Protocol):
    """What :func:`prepare` needs from an aligner (:class:`fer_lab.data.align.FaceAligner` is one)."""

    def align_batch(self, images: Sequence[np.ndarray], landmarks: Sequence[np.ndarray | None] | None = None,
                    boxes: Sequence[tuple[float, float, float, float] | None] | None = None, mode: str = "auto",
                    ) -> list[Any]: ...


# -- scanning ------------------------------------------------------------------------------------------------
def _import_readers() -> None:
    """Import every module of :mod:`fer_lab.data.readers` so that each registers its reader."""
    import fer_lab.data.readers as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")


def reader_options(name: str) -> list[str]:
    """The keyword options a registered reader accepts (beyond ``root`` and ``split``)."""
    sig = inspect.signature(READERS.get(name))
    return [n for n, p in list(sig.parameters.items())[2:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _split_params(spec: DatasetSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """(prepare parameters, reader options) of a spec; unknown reader options raise :class:`SpecError`."""
    prep = {k: v for k, v in spec.params.items() if k in _PREPARE_PARAMS}
    opts = {k: v for k, v in spec.params.items() if k not in _PREPARE_PARAMS}
    reader = READERS.get(spec.name)
    sig = inspect.signature(reader)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        known = reader_options(spec.name)
        unknown = sorted(set(opts) - set(known))
        if unknown:
            raise SpecError(
                f"dataset spec {str(spec)!r}: unknown parameter(s) {', '.join(unknown)}; {spec.name} accepts "
                f"{', '.join(list(_PREPARE_PARAMS) + known)}"
            )
    return prep, opts


def scan_spec(spec: str | DatasetSpec, split: str | None = None) -> Manifest:
    """The manifest of the dataset split a spec names (no image is decoded).

    ``split`` applies unless the spec pins its own (default ``train``). Raises :class:`ReaderError` for a wrong
    root or a broken layout, :class:`SpecError` for a malformed spec or an option the reader does not take.
    """
    s = parse_spec(spec)
    if split is not None:
        s = s.for_split(split)
    _import_readers()
    if s.name not in READERS:
        READERS.get(s.name)  # raises, naming the known readers
    if not s.arg:
        raise SpecError(f"dataset spec {str(s)!r} names no folder; write {s.name}:/path/to/the/dataset")
    _, opts = _split_params(s)
    split_name = str(s.params.get("split", "train"))
    if split_name not in SPLITS:
        raise SpecError(f"dataset spec {str(s)!r}: split {split_name!r} is not one of {', '.join(SPLITS)}")
    root = resolve_path(s.arg)
    if not root.exists():
        raise ReaderError(f"{root}: dataset root not found (spec {str(s)!r})")
    manifest = READERS.get(s.name)(root, split_name, **opts)
    if not isinstance(manifest, Manifest):
        raise TypeError(f"reader {s.name!r} returned {type(manifest).__name__}, not a Manifest")
    return manifest


# -- caching -------------------------------------------------------------------------------------------------
def default_cache_root() -> Path:
    """``$FER_LAB_CACHE``, or ``~/.cache/fer-lab``."""
    root = os.environ.get("FER_LAB_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "fer-lab"


def _canonical(spec: DatasetSpec) -> dict[str, Any]:
    """What identifies a prepared split: reader, absolute root, split and reader options (not size/align)."""
    prep, opts = _split_params(spec)
    return {
        "name": spec.name, "root": str(resolve_path(spec.arg).resolve()),
        "split": str(prep.get("split", "train")), "options": {k: opts[k] for k in sorted(opts)},
    }


def _key(canonical: dict[str, Any], size: int, align: str) -> str:
    blob = json.dumps({**canonical, "size": int(size), "align": align, "version": PREPARE_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir(spec: str | DatasetSpec, size: int = 112, align: str = "auto", root: str | os.PathLike | None = None
              ) -> Path:
    """Where a spec's prepared store lives: ``<cache root>/<dataset>/<split>-s<size>-<align>-<hash>``."""
    s = parse_spec(spec)
    _import_readers()
    canonical = _canonical(s)
    base = Path(root) if root is not None else default_cache_root()
    return base / s.name / f"{canonical['split']}-s{int(size)}-{align}-{_key(canonical, size, align)}"


# -- preparing -----------------------------------------------------------------------------------------------
@dataclass
class PrepareResult:
    """What :func:`prepare` produced: the store, where it lives and whether it was already there."""

    arrays: FaceArrays
    folder: Path
    cached: bool
    seconds: float


def _make_aligner(size: int, device: str) -> Aligner:
    from fer_lab.data.align import FaceAligner

    return FaceAligner(size=size, device=device)


def _record_mode(record: Record, mode: str) -> str:
    """The mode one face gets: the requested one, falling back where the face lacks landmarks or a box."""
    while True:
        if mode == "landmarks" and record.landmarks is None:
            mode = _FALLBACK[mode]
        elif mode == "bbox" and record.box is None:
            mode = _FALLBACK[mode]
        else:
            return mode


def _manifest_fingerprint(manifest: Manifest) -> str:
    h = hashlib.sha256()
    for r in manifest.records:
        h.update(f"{r.source}\t{r.label}\t{r.split}\n".encode())
    return h.hexdigest()[:16]


def _same_plan(arrays: FaceArrays, plan: dict[str, Any]) -> bool:
    """Whether a finished store was prepared from the same records with the same settings."""
    done = arrays.meta.get("plan", {})
    return all(done.get(k) == plan[k] for k in ("fingerprint", "size", "align", "version", "records"))


def _chunk_path(work: Path, i: int) -> Path:
    return work / f"chunk_{i:06d}.npz"


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, lambda f: f.write(text.encode()))


def _align_chunk(records: Sequence[Record], aligner: Aligner, size: int, mode: str) -> dict[str, np.ndarray]:
    """Decode and align one chunk; faces sharing a mode go through one ``align_batch`` call (batched detection)."""
    n = len(records)
    images = np.zeros((n, size, size, 3), np.uint8)
    landmarks = np.zeros((n, NUM_LANDMARKS, 2), np.float32)
    status = np.zeros((n,), np.int8)            # 1 aligned, 0 no face, -1 unreadable
    methods = [""] * n
    notes = [""] * n
    decoded: dict[int, np.ndarray] = {}
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        try:
            decoded[i] = read_image(rec)
        except ReaderError as e:
            status[i], notes[i] = -1, str(e)
            continue
        groups.setdefault(_record_mode(rec, mode), []).append(i)
    for m, idx in groups.items():
        try:
            faces = aligner.align_batch([decoded[i] for i in idx], [records[i].landmarks for i in idx],
                                        [records[i].box for i in idx], mode=m)
        except ValueError:   # bad geometry somewhere in the group (coinciding points, empty box): find it
            faces = []
            for i in idx:
                try:
                    faces += aligner.align_batch([decoded[i]], [records[i].landmarks], [records[i].box], mode=m)
                except ValueError as e:
                    faces.append(e)
        for i, face in zip(idx, faces):
            methods[i] = m
            if isinstance(face, ValueError):
                status[i], notes[i] = -1, f"{records[i].source}: cannot align ({m}): {face}"
                continue
            if face is None:
                notes[i] = f"{records[i].source}: no face found ({m})"
                continue
            if face.image.shape != (size, size, 3):
                raise ValueError(f"{records[i].source}: aligner returned {face.image.shape}, expected "
                                 f"{(size, size, 3)}")
            images[i], landmarks[i], status[i], methods[i] = face.image, face.landmarks, 1, face.method
    return {"images": images, "landmarks": landmarks, "status": status,
            "methods": np.array(methods, dtype=object), "notes": np.array(notes, dtype=object)}


def _save_chunk(path: Path, chunk: dict[str, np.ndarray]) -> None:
    arrays = dict(chunk, methods=np.array([str(m) for m in chunk["methods"]], dtype=str),
                  notes=np.array([str(m) for m in chunk["notes"]], dtype=str))
    _atomic_write_bytes(path, lambda f: np.savez(f, **arrays))


def _load_chunk(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _relative(source: str, root: Path) -> str:
    try:
        return str(Path(source).relative_to(root))
    except ValueError:
        return source


def prepare(manifest: Manifest, out: str | os.PathLike, size: int = 112, align: str = "auto",
            aligner: Aligner | None = None, device: str = "cpu", chunk_size: int = 256, progress: bool = True,
            force: bool = False, meta: dict[str, Any] | None = None) -> PrepareResult:
    """Align every record of ``manifest`` into a store at ``out`` (resumable; see the module docstring).

    ``align`` is one of :data:`ALIGN_MODES`; ``aligner`` defaults to a
    :class:`fer_lab.data.align.FaceAligner` of ``size`` on ``device``. An existing complete store at ``out``
    made from the same records and settings is loaded instead of redone (``force=True`` redoes it).
    ``meta`` is merged into the store's meta (the spec, for instance).
    """
    t0 = time.perf_counter()
    if align not in ALIGN_MODES:
        raise ValueError(f"align must be one of {', '.join(ALIGN_MODES)}, got {align!r}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if not len(manifest):
        raise ReaderError(f"{manifest.root}: {manifest.name} split {manifest.split!r} has no faces to prepare"
                          + (f" ({len(manifest.dropped)} dropped: {manifest.drop_counts()})" if manifest.dropped
                             else ""))
    out = Path(out)
    mode = manifest.align if align == "auto" else align
    if mode not in ALIGN_MODES:
        raise ValueError(f"{manifest.name}: reader suggests unknown align mode {mode!r}")
    plan = {"version": PREPARE_VERSION, "name": manifest.name, "split": manifest.split, "size": int(size),
            "align": mode, "records": len(manifest), "fingerprint": _manifest_fingerprint(manifest),
            "chunk_size": int(chunk_size)}
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        try:
            done = FaceArrays.load(out)
        except FileNotFoundError:
            raise ValueError(f"{out}: exists and is not a fer-lab store; choose another output folder") from None
        if not force and _same_plan(done, plan):
            return PrepareResult(done, out, True, time.perf_counter() - t0)
    work = out.with_name(out.name + ".partial")
    plan_file = work / "plan.json"
    if work.exists():
        try:
            old = json.loads(plan_file.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != plan:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not plan_file.exists():
        _atomic_write_text(plan_file, json.dumps(plan, indent=1, sort_keys=True))

    records = manifest.records
    n_chunks = (len(records) + chunk_size - 1) // chunk_size
    todo = [i for i in range(n_chunks) if not _chunk_path(work, i).exists()]
    if todo:
        from tqdm.auto import tqdm

        if aligner is None:
            aligner = _make_aligner(size, device)
        done_faces = (n_chunks - len(todo)) * chunk_size
        bar = tqdm(total=len(records), initial=min(done_faces, len(records)), unit="face",
                   desc=f"prepare {manifest.name} [{manifest.split}]", disable=not progress, file=sys.stderr)
        try:
            for i in todo:
                part = records[i * chunk_size:(i + 1) * chunk_size]
                chunk = _align_chunk(part, aligner, size, mode)
                work.mkdir(parents=True, exist_ok=True)   # another process may have finished and cleaned up
                _save_chunk(_chunk_path(work, i), chunk)
                bar.update(len(part))
        finally:
            bar.close()

    missing = [i for i in range(n_chunks) if not _chunk_path(work, i).exists()]
    if missing:   # a concurrent prepare of the same split finished first and removed the partial folder
        try:
            done = FaceArrays.load(out)
        except FileNotFoundError:
            done = None
        if done is None or not _same_plan(done, plan):
            raise RuntimeError(f"{work}: chunk {missing[0]} vanished while preparing; run the prepare again")
        return PrepareResult(done, out, True, time.perf_counter() - t0)
    chunks = [_load_chunk(_chunk_path(work, i)) for i in range(n_chunks)]
    status = np.concatenate([c["status"] for c in chunks]) if chunks else np.zeros((0,), np.int8)
    methods = [str(m) for c in chunks for m in c["methods"]]
    notes = [str(m) for c in chunks for m in c["notes"]]
    keep = np.flatnonzero(status == 1)
    images = np.concatenate([c["images"] for c in chunks])[keep]
    landmarks = np.concatenate([c["landmarks"] for c in chunks])[keep]
    kept = [records[i] for i in keep]
    labels = np.array([r.label for r in kept], np.int64)
    pose = np.array([r.pose if r.pose is not None else (np.nan,) * 3 for r in kept], np.float32).reshape(-1, 3)
    names = sorted({r.subject for r in kept if r.subject is not None})
    subject_id = {s: i for i, s in enumerate(names)}
    subject = np.array([subject_id.get(r.subject, -1) if r.subject is not None else -1 for r in kept], np.int64)
    root = Path(manifest.root)
    no_face = [notes[i] for i in np.flatnonzero(status == 0)]
    unreadable = [notes[i] for i in np.flatnonzero(status == -1)]
    info = {
        "name": manifest.name, "dataset": manifest.name, "split": manifest.split, "root": str(root),
        "size": int(size), "align": mode, "plan": plan,
        "methods": dict(Counter(methods[i] for i in keep).most_common()),
        "sources": [_relative(r.source, root) for r in kept],
        "splits": [r.split for r in kept] if manifest.split == "all" else None,
        "subjects": names, "class_counts": {}, "records": len(records),
        "dropped": [{"source": _relative(d.source, root), "reason": d.reason} for d in manifest.dropped],
        "drop_counts": manifest.drop_counts(), "notes": list(manifest.notes),
        "no_face": no_face, "unreadable": unreadable,
        "landmark_convention": "pixel (x, y) in the aligned image; order fer_lab.labels.LANDMARKS",
        **(meta or {}),
    }
    if info["splits"] is None:
        del info["splits"]
    arrays = FaceArrays(images, labels, landmarks, pose, subject, info)
    arrays.meta["class_counts"] = arrays.class_counts()
    arrays.save(out, overwrite=True)
    _atomic_write_text(out / "no_face.txt", "".join(line + "\n" for line in no_face))
    _atomic_write_text(out / "unreadable.txt", "".join(line + "\n" for line in unreadable))
    shutil.rmtree(work, ignore_errors=True)
    return PrepareResult(FaceArrays.load(out), out, False, time.perf_counter() - t0)


def load_prepared(spec: str | DatasetSpec, size: int = 112, align: str = "auto", cache: bool = True,
                  device: str = "cpu", progress: bool = True, aligner: Aligner | None = None) -> FaceArrays:
    """The prepared store of a spec: loaded from the cache when there, else scanned, aligned and cached.

    A cached store is loaded without rescanning the dataset (delete its folder, or use ``cache=False``, after
    changing the files). ``cache=False`` prepares into a temporary folder and returns the arrays in memory.
    """
    s = parse_spec(spec)
    _import_readers()
    if align not in ALIGN_MODES:
        raise SpecError(f"dataset spec {str(s)!r}: align {align!r} is not one of {', '.join(ALIGN_MODES)}")
    if cache:
        folder = cache_dir(s, size, align)
        if folder.exists():
            try:
                return FaceArrays.load(folder)
            except FileNotFoundError:
                pass  # a foreign or broken folder: prepare() replaces it below
        manifest = scan_spec(s)
        return prepare(manifest, folder, size=size, align=align, aligner=aligner, device=device,
                       progress=progress, meta={"spec": str(s)}).arrays
    manifest = scan_spec(s)
    with tempfile.TemporaryDirectory(prefix="fer-lab-prepare-") as tmp:
        res = prepare(manifest, Path(tmp) / "store", size=size, align=align, aligner=aligner, device=device,
                      progress=progress, meta={"spec": str(s)})
        a = res.arrays
        return FaceArrays(np.array(a.images), np.array(a.labels), np.array(a.landmarks), np.array(a.pose),
                          np.array(a.subject), dict(a.meta))


# -- dataset factories ---------------------------------------------------------------------------------------
def _factory(name: str) -> Callable[..., FaceArrays]:
    def factory(arg: str, split: str = "train", size: int = 112, align: str = "auto", cache: bool = True,
                device: str = "cpu", **options: Any) -> FaceArrays:
        spec = DatasetSpec(name, arg, {"split": split, **options})
        return load_prepared(spec, size=int(size), align=str(align), cache=bool(cache), device=str(device))

    doc = (inspect.getdoc(READERS.get(name)) or f"{name} dataset").strip().splitlines()[0]
    factory.__doc__ = (f"{doc}\n\nSpec ``{name}:/path?split=train&size=112&align=auto&cache=true&<reader options>``"
                       f" -> prepared, cached :class:`FaceArrays` (see :mod:`fer_lab.data.prepare`).")
    factory.__name__ = factory.__qualname__ = f"{name}_dataset"
    return factory


def register_reader_datasets() -> None:
    """Register a :data:`DATASETS` factory for every registered reader that has none yet (idempotent)."""
    _import_readers()
    for name in READERS.names():
        if name not in DATASETS:
            DATASETS.register(name, _factory(name))


# -- checking (``fer-lab data check``) -----------------------------------------------------------------------
@dataclass
class CheckReport:
    """What ``fer-lab data check`` found: the manifest, and every image that could not be decoded."""

    manifest: Manifest
    unreadable: list[str]
    decoded: int

    @property
    def ok(self) -> bool:
        return not self.unreadable and len(self.manifest) > 0


def check(spec: str | DatasetSpec, quick: bool = False, progress: bool = True) -> CheckReport:
    """Scan a spec and (unless ``quick``) decode every image, collecting the unreadable ones with the reason."""
    manifest = scan_spec(spec)
    unreadable: list[str] = []
    decoded = 0
    if not quick:
        from tqdm.auto import tqdm

        for rec in tqdm(manifest.records, desc=f"decode {manifest.name} [{manifest.split}]", unit="img",
                        disable=not progress, file=sys.stderr):
            try:
                read_image(rec)
                decoded += 1
            except ReaderError as e:
                unreadable.append(str(e))
    return CheckReport(manifest, unreadable, decoded)


def cmd_data(args: Any) -> int:
    """Handler of ``fer-lab data check|prepare`` (the parser lives in :mod:`fer_lab.cli`)."""
    if args.action == "check":
        rep = check(args.spec, quick=args.quick, progress=not args.no_progress)
        print(rep.manifest.summary())
        if rep.manifest.dropped and args.verbose:
            for d in rep.manifest.dropped:
                print(f"  dropped {d.source}: {d.reason}")
        elif rep.manifest.dropped:
            print("  (--verbose lists every dropped file and row)")
        if not args.quick:
            print(f"decoded {rep.decoded} of {len(rep.manifest)} images; {len(rep.unreadable)} unreadable")
            for line in rep.unreadable:
                print(f"  unreadable: {line}")
        if not len(rep.manifest):
            print("no faces in this split")
        return 0 if rep.ok else 1
    if args.action == "prepare":
        s = parse_spec(args.spec)
        _import_readers()
        size = int(args.size if args.size is not None else s.params.get("size", 112))
        align = str(args.align if args.align is not None else s.params.get("align", "auto"))
        if align not in ALIGN_MODES:
            raise SpecError(f"align {align!r} is not one of {', '.join(ALIGN_MODES)}")
        out = Path(args.out) if args.out else cache_dir(s, size, align)
        manifest = scan_spec(s)
        print(manifest.summary(), flush=True)
        res = prepare(manifest, out, size=size, align=align, device=args.device, chunk_size=args.chunk_size,
                      progress=not args.no_progress, force=args.force, meta={"spec": str(s)})
        a = res.arrays
        state = "already prepared" if res.cached else f"prepared in {res.seconds:.1f} s"
        print(f"{state}: {len(a)} faces {a.image_size[0]}x{a.image_size[1]} in {res.folder}")
        print(f"  alignment: {', '.join(f'{k} {v}' for k, v in a.meta.get('methods', {}).items()) or '-'}")
        print(f"  no face found: {len(a.meta.get('no_face', []))} (no_face.txt); "
              f"unreadable: {len(a.meta.get('unreadable', []))} (unreadable.txt)")
        return 0
    raise ValueError(f"unknown data action {args.action!r}")


def add_data_parser(sub: Any) -> None:
    """Add ``fer-lab data check|prepare`` to the CLI's sub-parsers."""
    d = sub.add_parser("data", help="check a dataset layout or prepare it into a cached store")
    dsub = d.add_subparsers(dest="action", required=True)
    c = dsub.add_parser("check", help="validate a dataset layout, print what was found, decode every image")
    c.add_argument("spec", help="dataset spec, e.g. rafdb:/data/RAF-DB/basic?split=train")
    c.add_argument("--quick", action="store_true", help="scan only; do not decode the images")
    c.add_argument("--verbose", action="store_true", help="list every dropped file or row with its reason")
    c.add_argument("--no-progress", action="store_true")
    p = dsub.add_parser("prepare", help="align a dataset split into a store of uint8 faces (resumable)")
    p.add_argument("spec", help="dataset spec, e.g. fer2013:/data/fer2013.csv?split=test")
    p.add_argument("--out", default=None, help="store folder (default: the cache folder the spec loads from)")
    p.add_argument("--size", type=int, default=None, help="face size in pixels (default: the spec's, else 112)")
    p.add_argument("--align", default=None, choices=list(ALIGN_MODES), help="alignment mode (default: auto)")
    p.add_argument("--device", default="cpu", help="device for the face detector")
    p.add_argument("--chunk-size", type=int, default=256, help="faces per resumable chunk")
    p.add_argument("--force", action="store_true", help="redo a store that is already complete")
    p.add_argument("--no-progress", action="store_true")
    for parser in (c, p):
        parser.set_defaults(func=cmd_data)
