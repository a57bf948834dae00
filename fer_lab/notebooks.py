"""Run, clean and check the numbered notebooks.

    fer-lab notebooks run [--profile smoke|full|auto] [--device cpu|cuda] [--only 00] [--out reports/notebooks]
                          [--quick] [--lanes 2]  # the main job's cuts (QUICK); notebooks two at a time
    fer-lab notebooks clean [NOTEBOOK ...]      # strip outputs, execution counts and volatile metadata
    fer-lab notebooks check [NOTEBOOK ...]      # fail on outputs, stale execution counts or oversize files

Every numbered notebook (``notebooks/NN_*.ipynb``) has a first code cell tagged ``parameters`` that takes at
least ``profile``, ``device`` and ``results_path``; it writes its metrics to ``results_path`` as JSON. The runner
executes each with papermill into a git-ignored folder, renders HTML beside it (:func:`export_html`: one page that
opens offline, plotly.js embedded once, figures interactive, widgets as static views), and prints a summary table of
each notebook's headline metrics and run time.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NUMBERED = re.compile(r"^\d\d_.+\.ipynb$")
MAX_NOTEBOOK_KB = 100
KEEP_METADATA = ("kernelspec", "language_info")
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
#: The main job's cuts (``fer-lab notebooks run --quick``, ``scripts/main.sh``): per notebook number, the parameters
#: that leave out its optional sections, so that the main job, its quick bench included, stays within 15 minutes on a
#: 2-core CPU at the smoke profile. Without ``--quick`` every section runs.
QUICK: dict[str, dict[str, Any]] = {
    "01": {"ablations": False},                              # AGLRLS's ablations
    "02": {"ablations": False},                              # LA-CMFER's ablations (the baselines stay)
    "03": {"variants": False},                               # DMSRL's released-code variants and ablations
    "04": {"ablations": False},                              # pose-aware ADA's ablations (the pooled row stays)
    "05": {"table1": False, "check_machinery": False},       # the Table-1 rotation and the machinery check
    "06": {"draws": 2, "steps": 150},                        # a smaller sweep: 2 methods x 2 draws x 2 seeds
}
# a <script> element holding the plotly.js library (what plotly's "notebook" renderer puts in an output once per kernel)
PLOTLY_LIBRARY = re.compile(r"<script[^>]*>\s*/\*\*?\s*\*\s*plotly\.js v.*?</script>", re.S)


def discover(root: str | Path = NOTEBOOK_DIR, only: Sequence[str] = ()) -> list[Path]:
    """The numbered notebooks in ``root``, in order; ``only`` filters by number prefix or name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"notebook folder not found: {root}")
    books = sorted(p for p in root.iterdir() if NUMBERED.match(p.name))
    if only:
        books = [p for p in books if any(p.name.startswith(o) or p.stem == o for o in only)]
        if not books:
            raise FileNotFoundError(f"no numbered notebook in {root} matches {', '.join(only)}")
    return books


def run_notebook(path: str | Path, out_dir: str | Path, parameters: dict[str, Any] | None = None,
                 html: bool = True, kernel: str = "python3", progress: bool = False,
                 cell_timeout: float | None = None) -> dict[str, Any]:
    """Execute one notebook with papermill; returns ``{"notebook", "seconds", "metrics", "output", "html"}``.

    ``cell_timeout`` (seconds, default none) bounds each cell: a cell still running then is interrupted and the run
    fails with papermill's error naming that cell (its traceback shows where it was), instead of waiting forever.
    The executed notebook is saved after every cell, so ``out_dir`` shows how far a failed run got.
    """
    import papermill as pm

    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / f"{path.stem}.metrics.json"
    results.unlink(missing_ok=True)
    params = {"results_path": str(results.resolve()), **(parameters or {})}
    executed = out_dir / path.name
    t0 = time.perf_counter()
    limits = {"execution_timeout": cell_timeout, "interrupt_on_timeout": True} if cell_timeout else {}
    pm.execute_notebook(str(path), str(executed), parameters=params, kernel_name=kernel, progress_bar=progress,
                        cwd=str(path.parent), **limits)
    seconds = time.perf_counter() - t0
    if not results.is_file():
        raise RuntimeError(f"{path}: ran, but wrote no metrics to {results} (its results_path parameter)")
    record = {"notebook": path.name, "seconds": seconds, "metrics": json.loads(results.read_text()),
              "output": str(executed), "html": None}
    if html:
        record["html"] = str(export_html(executed, out_dir / f"{path.stem}.html"))
    return record


def export_html(notebook: str | Path, out: str | Path | None = None) -> Path:
    """Render an executed notebook as one HTML page that opens offline with interactive figures; returns its path
    (default: beside the notebook, ``.html``).

    * plotly.js is embedded once, in the page's head, never per figure: every output that carries a plotly figure's
      JSON is drawn from it by a small div (hover, zoom and legend work without a network), and any copy of the
      library that a notebook renderer left in an output is dropped.
    * Widgets need a kernel, and their page script a CDN, so the stored widget state is left out: each widget shows
      its static representation instead (the threshold explorer: its figure at the last threshold, with a note
      saying so; a progress bar: its last line). The executed notebook itself is not changed.
    """
    import nbformat
    import plotly.io as pio
    from nbconvert import HTMLExporter
    from plotly.offline import get_plotlyjs

    notebook = Path(notebook)
    out = Path(out) if out is not None else notebook.with_suffix(".html")
    nb = nbformat.read(notebook, as_version=4)
    widgets = nb.metadata.get("widgets")
    if isinstance(widgets, dict):
        widgets.pop(WIDGET_STATE_MIME, None)
        if not widgets:
            del nb.metadata["widgets"]
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME in data:
                data["text/html"] = pio.to_html(data[PLOTLY_MIME], include_plotlyjs=False, full_html=False,
                                                default_width="100%", default_height=525, validate=False)
            elif "text/html" in data:
                text = data["text/html"]
                text = "".join(text) if isinstance(text, list) else text
                stripped = PLOTLY_LIBRARY.sub("", text)
                if stripped != text:
                    if not stripped.strip() or "<div" not in stripped:  # nothing but the library (and its config)
                        continue
                    data["text/html"] = stripped
            kept.append(output)
        cell.outputs = kept
    body, _ = HTMLExporter().from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
    if "Plotly.newPlot" in body:
        library = ("<script type=\"text/javascript\">window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
                   f"<script type=\"text/javascript\">{get_plotlyjs()}</script>\n")
        head_end = body.find("</head>")
        if head_end < 0:
            raise RuntimeError(f"{notebook}: the HTML exporter wrote a page without </head>")
        body = body[:head_end] + library + body[head_end:]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out


def summary_table(records: Iterable[dict[str, Any]]) -> str:
    from fer_lab.evaluate import format_table

    rows = []  # headline values are already in display units (e.g. accuracy in %)
    for r in records:
        row: dict[str, Any] = {"notebook": r["notebook"], "time (s)": f"{r['seconds']:.0f}"}
        for k, v in (r["metrics"].get("headline") or {}).items():
            row[k] = v
        rows.append(row)
    return format_table(rows, percent=False)


def parameters(path: str | Path) -> dict[str, Any]:
    """The names a notebook's first code cell (its ``parameters`` cell) assigns, with their literal defaults
    (``None`` where the default is not a literal)."""
    import ast

    import nbformat

    code = next((c for c in nbformat.read(Path(path), as_version=4).cells if c.cell_type == "code"), None)
    if code is None:
        raise ValueError(f"{path}: no code cell, so no parameters cell")
    out: dict[str, Any] = {}
    for node in ast.parse(code.source).body:
        if isinstance(node, ast.Assign):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = None
            out.update({t.id: value for t in node.targets if isinstance(t, ast.Name)})
    return out


#: Parameters that size a notebook's own worker pool; with ``lanes`` > 1 each notebook gets one worker.
POOL_PARAMETERS = ("workers", "bench_workers")
#: With ``lanes`` > 1 the notebooks start longest first (the main job's quick smoke run, measured here: 02, 04 and
#: 06 about 3 minutes each, 05 and 03 under 1.5, 00 and 01 under 1), so that no lane is left with a long notebook at
#: the end; the others follow in number order. Only the order of the runs changes, never a result.
LANE_ORDER = ("02", "04", "06", "05", "03")


def _one_thread_lane() -> None:
    import os

    # the kernels a lane starts inherit this: one thread each, so that `lanes` notebooks share the cores evenly
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"


def _run_lane_task(task: tuple) -> dict[str, Any]:
    path, out_dir, params, cell_timeout = task
    return run_notebook(path, out_dir, params, cell_timeout=cell_timeout)


def _run_indexed(item: tuple[int, tuple]) -> tuple[int, dict[str, Any]]:
    return item[0], _run_lane_task(item[1])


def run_all(profile: str = "auto", device: str = "auto", out_dir: str | Path = "reports/notebooks",
            only: Sequence[str] = (), root: str | Path = NOTEBOOK_DIR, extra: dict[str, Any] | None = None,
            cell_timeout: float | None = None, quick: bool = False, lanes: int = 1) -> list[dict[str, Any]]:
    """Execute every numbered notebook (or ``only`` those); returns their records in notebook order.

    ``extra`` parameters go to each notebook that defines them; ``quick`` adds :data:`QUICK`'s cuts. ``lanes`` > 1
    runs that many notebooks at once, each in its own process whose kernel uses one thread, with one worker for the
    notebook's own bench or sweep (:data:`POOL_PARAMETERS`): on a small CPU this keeps every core busy through the
    single-process parts (training in the kernel, UMAP, Captum, HTML export). A notebook's figures depend on its
    kernel's thread count (as any run's do), so a lane run's figures match other one-thread runs, not a
    two-thread kernel's.
    """
    from tqdm.auto import tqdm

    books = discover(root, only)
    tasks = []
    for nb in books:
        defined = parameters(nb)
        params = {"profile": profile, "device": device,
                  **{k: v for k, v in (extra or {}).items() if k in defined},
                  **(QUICK.get(nb.name[:2], {}) if quick else {})}
        if lanes > 1:
            params.update({k: 1 for k in POOL_PARAMETERS if k in defined})
        tasks.append((nb, out_dir, params, cell_timeout))
    bar = tqdm(total=len(tasks), desc="notebooks", unit="nb")
    if lanes > 1:
        import multiprocessing as mp

        rank = {n: i for i, n in enumerate(LANE_ORDER)}
        order = sorted(range(len(tasks)), key=lambda i: (rank.get(books[i].name[:2], len(rank)), i))
        by_index: dict[int, dict[str, Any]] = {}
        with mp.get_context("spawn").Pool(lanes, initializer=_one_thread_lane) as pool:
            for i, record in pool.imap_unordered(_run_indexed, [(i, tasks[i]) for i in order], chunksize=1):
                by_index[i] = record
                bar.update()
        records = [by_index[i] for i in range(len(tasks))]
    else:
        records = []
        for task in tasks:
            records.append(_run_lane_task(task))
            bar.update()
    bar.close()
    (Path(out_dir) / "summary.json").write_text(json.dumps(records, indent=1))
    return records


# -- hygiene -----------------------------------------------------------------------------------------------------
def clean(path: str | Path) -> bool:
    """Strip outputs, execution counts and volatile metadata in place; returns True when the file changed."""
    import nbformat

    path = Path(path)
    before = path.read_text()
    nb = nbformat.reads(before, as_version=4)
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_METADATA}
    for cell in nb.cells:
        cell.pop("id", None)
        tags = cell.get("metadata", {}).get("tags")
        cell["metadata"] = {"tags": tags} if tags else {}
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.nbformat_minor = 4  # no cell ids: stable diffs
    after = nbformat.writes(nb) + "\n"
    if after != before:
        path.write_text(after)
    return after != before


def check(path: str | Path, max_kb: int = MAX_NOTEBOOK_KB) -> list[str]:
    """Problems that keep a notebook from being committed: outputs, execution counts, size, no parameters cell."""
    import nbformat

    path = Path(path)
    problems = []
    size_kb = path.stat().st_size / 1024
    if size_kb > max_kb:
        problems.append(f"{path}: {size_kb:.0f} KiB is over the {max_kb} KiB limit")
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, c in enumerate(code):
        if c.get("execution_count") is not None:
            problems.append(f"{path}: code cell {i} has a stale execution count ({c.execution_count})")
        if c.get("outputs"):
            problems.append(f"{path}: code cell {i} carries outputs")
    if NUMBERED.match(path.name) and (not code or "parameters" not in code[0].get("metadata", {}).get("tags", [])):
        problems.append(f"{path}: the first code cell is not tagged 'parameters'")
    return problems
