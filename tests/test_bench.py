"""The benchmark protocol's mechanics: rows, selection rules, paired statistics, the report, the cached stage 1,
worker-count independence and resume. No test here compares two methods: that is what a bench run reports."""

import json
import math

import pytest

from fer_lab import bench
from fer_lab.bench import BenchConfig, BenchReport, paired_difference, parse_row, select, split_rows, t_interval


def test_rows_parse_with_hyper_parameters_and_lists_split_outside_brackets():
    r = parse_row("aglrls[pseudo_labels=false,threshold=fixed,p_cutoff=0.9]")
    assert (r.label, r.method) == ("aglrls[pseudo_labels=false,threshold=fixed,p_cutoff=0.9]", "aglrls")
    assert r.hparams == {"pseudo_labels": False, "threshold": "fixed", "p_cutoff": 0.9}
    assert split_rows("source_only, dann[a=1,b=2],cdan") == ("source_only", "dann[a=1,b=2]", "cdan")
    with pytest.raises(ValueError, match="not 'name' or 'name\\[key=value"):
        parse_row("dann[a=1")
    with pytest.raises(ValueError, match="'b' is not key=value"):
        parse_row("dann[b]")
    with pytest.raises(ValueError, match="listed twice: dann"):
        BenchConfig(methods=("dann", "dann"), profile="tiny").resolved()
    with pytest.raises(KeyError, match="no_such_method"):
        BenchConfig(methods=("no_such_method",), profile="tiny").resolved()


def test_format_row_reads_back_through_parse_row_and_refuses_what_would_not():
    assert bench.format_row("dann") == "dann" and bench.format_row("dann", {}) == "dann"
    hp = {"sample_weights": False, "lr": 0.1, "steps": 3, "mi": "discriminator", "p": None}
    text = bench.format_row("la_cmfer", hp)
    assert text == "la_cmfer[sample_weights=false,lr=0.1,steps=3,mi=discriminator,p=null]"
    assert parse_row(text).hparams == hp and parse_row(text).method == "la_cmfer"
    for bad in ({"mi": "true"}, {"mi": "0.5"}, {"mi": "a,b"}, {"grid": [1, 2]}):
        with pytest.raises(ValueError):
            bench.format_row("m", bad)


def test_leave_one_out_tasks():
    tasks = bench.leave_one_out(("a:1", "b:2", "c:3"))
    assert tasks == ((("b:2", "c:3"), "a:1"), (("a:1", "c:3"), "b:2"), (("a:1", "b:2"), "c:3"))
    with pytest.raises(ValueError, match="at least 3 domains"):
        bench.leave_one_out(("a:1", "b:2"))


def _ev(target, val, mca=None):
    return {"eval": {"target": {"acc": target, "mean_class_acc": mca if mca is not None else target / 2},
                     "source_val": {"acc": val, "mean_class_acc": val}}}


def test_selection_rules_on_a_constructed_history():
    history = [{"step": 1, "loss": 1.0}, _ev(0.50, 0.70), _ev(0.60, 0.90), _ev(0.80, 0.90), _ev(0.55, 0.60)]
    s = select(history)
    assert s["acc"] == {"last": 0.55, "target_test": 0.80, "source_val": 0.80}   # the later of the tied val peaks
    assert s["mean_class_acc"]["source_val"] == 0.40
    assert s["last_move"] == pytest.approx(0.25)
    multi = [{"eval": {"target": {"acc": 0.3, "mean_class_acc": 0.3}, "source_val/0": {"acc": 0.9},
                       "source_val/1": {"acc": 0.1}}},
             {"eval": {"target": {"acc": 0.4, "mean_class_acc": 0.4}, "source_val/0": {"acc": 0.6},
                       "source_val/1": {"acc": 0.6}}}]
    assert select(multi)["acc"]["source_val"] == 0.4                          # mean over the sources' val splits
    with pytest.raises(ValueError, match="no evaluation records"):
        select([{"step": 1, "loss": 0.3}])


def test_t_interval_and_paired_difference_match_hand_computations():
    mean, lo, hi = t_interval([0.1, 0.2, 0.3])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)                              # t(0.975, 2) * sd / sqrt(n)
    assert (mean, lo, hi) == pytest.approx((0.2, 0.2 - half, 0.2 + half))
    assert math.isnan(t_interval([0.5])[1])
    d = paired_difference([0.5, 0.7, 0.6], [0.4, 0.5, 0.6])
    assert d["diff"] == pytest.approx(0.1) and d["wins"] == 2 and d["n"] == 3
    assert d["lo"] == pytest.approx(0.1 - 4.302652729911275 * 0.1 / math.sqrt(3))
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([0.1, 0.2], [0.1])


def _cell(row, target, seed, acc):
    return {"row": row, "target": target, "seed": seed, "last_move": 0.01,
            "acc": {r: acc for r in bench.SELECTIONS}, "mean_class_acc": {r: acc / 2 for r in bench.SELECTIONS}}


def test_report_tables_pair_seeds_and_average_targets():
    cells = [_cell("source_only", t, s, 0.5 + 0.1 * s) for t in ("synth:lab", "synth:lowres") for s in (0, 1)]
    cells += [_cell("dann", "synth:lab", s, 0.6 + 0.1 * s) for s in (0, 1)]
    cells += [_cell("dann", "synth:lowres", s, 0.4 + 0.1 * s) for s in (0, 1)]
    cells += [_cell("oracle", t, s, 0.9) for t in ("synth:lab", "synth:lowres") for s in (0, 1)]
    report = BenchReport({"profile": "tiny", "backbone": "smallcnn", "start": "scratch", "image_size": 32,
                          "stage1_steps": 1, "steps": 1, "threads": 1,
                          "task_list": [[["synth:wild"], "synth:lab"], [["synth:wild"], "synth:lowres"]]}, cells)
    rows = {r["method"]: r for r in report.rows("last")}
    assert rows["dann"]["synth:lab"] == pytest.approx(0.65) and rows["dann"]["mean"] == pytest.approx(0.55)
    assert rows["dann"]["vs source_only"]["diff"] == pytest.approx(0.0)
    assert rows["source_only"]["synth:lab sd"] == pytest.approx(0.0707, abs=1e-4)
    assert report.oracle_gap()["diff"] == pytest.approx(0.35)
    md = report.markdown()
    assert "| dann | 65.0 ± 7.1 | 45.0 ± 7.1 | 55.0 ± 7.1 | +0.0" in md and "optimistic" in md
    assert json.loads(json.dumps(report.to_json()))["oracle_gap"]["diff"] == pytest.approx(0.35)
    frame = report.frame()
    assert frame.loc["dann", "synth:lab"] == "65.0 ± 7.1" and frame.loc["dann", "Δ vs source-only [95 % CI]"] == "+0.0 [+0.0, +0.0]"
    with pytest.raises(KeyError, match="no bench cell 'cdan'"):
        report.run_dir("cdan")


@pytest.mark.slow
def test_arch_reaches_stage1_and_every_row_and_keys_its_own_stage1(tmp_path, monkeypatch):
    """``arch`` shapes the network stage 2 starts from: stage 1 trains with it (so its cache entry is another one)
    and every row, the oracle too, gets it; without it the plan is the default one."""
    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    base = dict(methods=("source_only", "dann"), targets=("synth:lab",), seeds=(0,), profile="tiny", start="scratch",
                out_dir=str(tmp_path / "b"))
    jobs0, cells0 = bench.plan(BenchConfig(**base))
    jobs2, cells2 = bench.plan(BenchConfig(**base, arch={"global_grid": 2}))
    s1_0, s1_2 = jobs0[0].kwargs, jobs2[0].kwargs
    assert "hparams" not in s1_0["config"] and s1_2["config"]["hparams"] == {"global_grid": 2}
    assert s1_0["out_dir"] != s1_2["out_dir"]
    assert {c["row"] for c in cells2} == {"source_only", "dann", "oracle"}
    assert all(c["hparams"]["global_grid"] == 2 and c["stage1"] == s1_2["out_dir"] for c in cells2)
    assert all("global_grid" not in c["hparams"] for c in cells0)
    assert {c["key"] for c in cells0}.isdisjoint(c["key"] for c in cells2)


def test_single_source_cells_train_on_one_source_from_its_own_stage1(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    base = dict(tasks=((("synth:lab", "synth:wild"), "synth:profile"),), methods=("source_only",), seeds=(0, 1),
                profile="tiny", start="scratch", oracle=False, out_dir=str(tmp_path / "b"))
    jobs0, cells0 = bench.plan(BenchConfig(**base))
    jobs, cells = bench.plan(BenchConfig(**base, single_sources=True))
    assert not any(c.get("single") for c in cells0)
    singles = [c for c in cells if c.get("single")]
    assert sorted((c["single"], c["seed"]) for c in singles) == [("synth:lab", 0), ("synth:lab", 1),
                                                                 ("synth:wild", 0), ("synth:wild", 1)]
    by_key = {j.key: j for j in jobs}
    for c in singles:
        job = by_key[c["key"]]
        assert job.kwargs["config"]["source"] == [c["single"]] and c["row"] == bench.BEST_SINGLE
        (s1,) = job.after
        assert by_key[s1].kwargs["config"]["source"] == [c["single"]] and by_key[s1].kwargs["out_dir"] == c["stage1"]
    assert len({j.key for j in jobs}) == len(jobs)                     # each single-source stage 1 planned once


def test_a_new_synthfer_renderer_makes_new_stage1_entries_and_cells(tmp_path, monkeypatch):
    """Even from a scratch start (no pretrain key to carry it), SynthFER's renderer version keys stage 1 and cells."""
    import fer_lab.data.synth as synth

    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    cfg = BenchConfig(methods=("source_only",), targets=("synth:lab",), seeds=(0,), profile="tiny", start="scratch",
                      oracle=False, out_dir=str(tmp_path / "b"))
    jobs_a, cells_a = bench.plan(cfg)
    monkeypatch.setattr(synth, "RENDERER_VERSION", synth.RENDERER_VERSION + 1)
    jobs_b, cells_b = bench.plan(cfg)
    assert jobs_a[0].kwargs["out_dir"] != jobs_b[0].kwargs["out_dir"]
    assert cells_a[0]["key"] != cells_b[0]["key"]


def test_best_single_source_takes_the_best_source_under_each_rule():
    def cell(src, seed, last, val, test):
        return {"key": f"{src}{seed}", "row": bench.BEST_SINGLE, "single": src, "target": "t", "seed": seed,
                "acc": {"last": last, "source_val": val, "target_test": test},
                "mean_class_acc": {"last": last / 2, "source_val": val / 2, "target_test": test / 2},
                "last_move": 0.0, "run_dir": f"runs/{src}{seed}"}
    other = {"key": "so0", "row": "source_only", "target": "t", "seed": 0, "acc": {"last": 0.5}}
    merged, singles = bench.merge_single_sources([other, cell("a", 0, 0.4, 0.6, 0.7), cell("b", 0, 0.5, 0.3, 0.9)])
    assert len(singles) == 2 and merged[0] is other
    best = merged[1]
    assert best["acc"] == {"last": 0.5, "source_val": 0.6, "target_test": 0.9}
    assert best["mean_class_acc"] == {"last": 0.25, "source_val": 0.3, "target_test": 0.45}
    assert best["chosen"] == {"last": "b", "source_val": "a", "target_test": "b"}
    assert best["run_dir"] == "runs/b0" and best["sources"] == ["a", "b"] and "single" not in best


def test_one_folder_named_two_ways_plans_the_same_jobs(tmp_path, monkeypatch):
    """A bench run from the repository with ``reports/bench`` and a notebook's bench with the absolute path of the
    same folder as ``cells_dir`` must find each other's done cells (same job arguments)."""
    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    base = dict(methods=("source_only",), targets=("synth:lab",), seeds=(0,), profile="tiny", start="scratch")
    relative, _ = bench.plan(BenchConfig(**base, out_dir="reports/bench"))
    absolute, _ = bench.plan(BenchConfig(**base, out_dir="elsewhere", cells_dir=str(tmp_path / "reports" / "bench")))
    assert [(j.key, j.kwargs) for j in relative] == [(j.key, j.kwargs) for j in absolute]


def test_a_tiny_bench_caches_stage1_gives_the_same_cells_with_1_and_2_workers_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    base = dict(targets=("synth:lab",), methods=("source_only", "dann"), seeds=(0,), profile="tiny",
                start="scratch", steps=6, stage1_steps=6, eval_every=3, progress=False)
    one = bench.run_bench(BenchConfig(**base, workers=1, out_dir=str(tmp_path / "one")))
    assert not one.failed and {c["row"] for c in one.cells} == {"source_only", "dann", "oracle"}
    stage1 = {c["stage1"] for c in one.cells}
    assert len(stage1) == 1
    s1_results = next(iter(stage1)) + "/results.json"
    stamp = (tmp_path / "cache").stat().st_mtime_ns, json.loads(open(s1_results).read())
    two = bench.run_bench(BenchConfig(**base, workers=2, out_dir=str(tmp_path / "two")))
    assert json.loads(open(s1_results).read()) == stamp[1]                     # stage 1 reused, not retrained
    strip = lambda cells: {c["key"]: (c["acc"], c["mean_class_acc"], c["per_class"]) for c in cells}  # noqa: E731
    assert strip(one.cells) == strip(two.cells)
    dann = next(c for c in two.cells if c["row"] == "dann")
    cfg = json.loads(open(dann["run_dir"] + "/config.json").read())
    assert cfg["init_fresh"] and cfg["config"]["init_from"] == dann["stage1"]
    # resume: a cell whose done marker is gone is recomputed alone, to the same figures
    (tmp_path / "two" / "jobs" / dann["key"] / "done.json").unlink()
    again = bench.run_bench(BenchConfig(**base, workers=1, out_dir=str(tmp_path / "two")))
    assert strip(again.cells) == strip(two.cells)
    assert (tmp_path / "two" / "bench.md").read_text().startswith("# CD-FER benchmark")


def test_new_layers_of_la_cmfer_and_dmsrl_cells_train_at_ten_times_the_shared_trunk_rate(tmp_path, monkeypatch):
    """Every stage-2 trunk trains at the shared rate; LA-CMFER's new branch layers at 10x it, as in the paper, and
    DMSRL's own modules at 10x too."""
    from fer_lab.methods import build_method

    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    cfg = BenchConfig(tasks=((("synth:lab", "synth:wild"), "synth:profile"),), methods=("dann", "la_cmfer", "dmsrl"),
                      seeds=(0,), profile="tiny", start="scratch", oracle=False, out_dir=str(tmp_path / "b"))
    _, cells = bench.plan(cfg)
    hp = {c["row"]: c["hparams"] for c in cells}
    rates = {}
    for row in ("dann", "la_cmfer"):
        method = build_method(row, hp[row])
        groups = method.build_optimizer().param_groups
        trunk = {id(p) for p in method.extractor.backbone.parameters()}
        rates[row] = {("trunk" if id(g["params"][0]) in trunk else "rest"): g["lr"] for g in groups if g["params"]}
    assert rates["dann"]["trunk"] == pytest.approx(bench.STAGE2_HPARAMS["lr"])
    assert rates["la_cmfer"]["trunk"] == pytest.approx(bench.STAGE2_HPARAMS["lr"])
    assert rates["la_cmfer"]["rest"] == pytest.approx(10 * bench.STAGE2_HPARAMS["lr"])
    assert hp["dmsrl"] == {**bench.STAGE2_HPARAMS, "head_lr_mult": 10.0} == bench.stage2_hparams("dmsrl")
    # a row's own value still wins over the bench's
    _, cells = bench.plan(BenchConfig(**{**cfg.__dict__, "methods": ("la_cmfer[lr=0.05]",)}))
    assert cells[0]["hparams"]["lr"] == 0.05 and cells[0]["hparams"]["backbone_lr_mult"] == 0.1


def test_starts_build_the_backbone_they_name_and_key_stage1_apart(tmp_path, monkeypatch):
    """``scratch`` builds a packaged-weights backbone at random (``pretrained=false``), ``package`` with its
    packaged weights; the two are different stage-1 entries. Wrong combinations fail before anything trains."""
    monkeypatch.setenv("FER_LAB_CACHE", str(tmp_path / "cache"))
    base = dict(methods=("source_only",), targets=("synth:lab",), seeds=(0,), profile="tiny", oracle=False,
                out_dir=str(tmp_path / "b"))
    scratch = BenchConfig(backbone="efficientnet_lite0", start="scratch", **base).resolved()
    package = BenchConfig(backbone="efficientnet_lite0", start="package", **base).resolved()
    assert bench.start_backbone(scratch) == "efficientnet_lite0?pretrained=false"
    assert bench.start_backbone(package) == "efficientnet_lite0"
    assert bench.start_backbone(BenchConfig(backbone="smallcnn", start="scratch", **base).resolved()) == "smallcnn"
    assert bench.start_backbone(BenchConfig(backbone="efficientnet_lite0?drop_path_rate=0.1", start="scratch",
                                            **base).resolved()) == "efficientnet_lite0?drop_path_rate=0.1&pretrained=false"
    (j_s, *_), cells_s = bench.plan(scratch)
    (j_p, *_), cells_p = bench.plan(package)
    assert j_s.kwargs["config"]["backbone"] == "efficientnet_lite0?pretrained=false"
    assert j_p.kwargs["config"]["backbone"] == "efficientnet_lite0"
    assert j_s.kwargs["out_dir"] != j_p.kwargs["out_dir"] and cells_s[0]["key"] != cells_p[0]["key"]
    with pytest.raises(ValueError, match="'smallcnn' ships no weights in a package"):
        BenchConfig(backbone="smallcnn", start="package", **base).resolved()
    with pytest.raises(ValueError, match="the tiny recipe trains a smallcnn, not 'efficientnet_lite0'"):
        BenchConfig(backbone="efficientnet_lite0", start="pretrain", **base).resolved()
    with pytest.raises(FileNotFoundError, match="'package' or a file"):
        BenchConfig(start=str(tmp_path / "none.pth"), **base).resolved()


def test_the_default_backbone_is_the_pretrain_recipes():
    """A ``pretrain`` start needs the backbone its recipe trains (smallcnn on tiny and smoke, resnet18 on full); other
    starts default to smallcnn; a named backbone is kept."""
    base = dict(methods=("source_only",), targets=("synth:lab",), seeds=(0,), oracle=False)
    assert BenchConfig(profile="tiny", **base).resolved().backbone == "smallcnn"
    assert BenchConfig(profile="full", **base).resolved().backbone == "resnet18"
    assert BenchConfig(profile="full", start="scratch", **base).resolved().backbone == "smallcnn"
    assert BenchConfig(profile="full", start="scratch", backbone="ir50", **base).resolved().backbone == "ir50"
