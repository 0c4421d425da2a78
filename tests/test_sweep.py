"""The ablation sweep: spec validation, grid expansion, kill + resume end to end, the report."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import REPO, TINY, kill_after_first_result, write_spec

from set_lightning.errors import UserError
from set_lightning.experiments.report import summarise, to_markdown
from set_lightning.experiments.spec import expand, load_spec
from set_lightning.experiments.stats import welch_p_value


def test_shipped_ablation_files_are_valid():
    files = sorted((REPO / "ablations").glob("*.yaml"))
    assert files, "ablations/ ships no ablation file"
    for f in files:
        spec = load_spec(f)
        runs = expand(spec, "runs/sweeps")
        assert len(runs) == len(spec.seeds) * len(spec.variants) * max(1, _grid_size(spec))
        assert len({r.run_dir for r in runs}) == len(runs)


def _grid_size(spec) -> int:
    n = 1
    for values in spec.grid.values():
        n *= len(values)
    return n


def test_expand_grid_variants_seeds(tmp_path):
    path = write_spec(tmp_path, {
        "name": "g", "seeds": [0, 1, 2], "reference": "a",
        "variants": {"a": {}, "b": {"model.lr": 0.01}},
        "grid": {"data.n_particles": [5, 20]},
        "overrides": {"trainer.max_epochs": 1},
    })
    runs = expand(load_spec(path), tmp_path / "out")
    assert len(runs) == 12
    b20 = [r for r in runs if r.variant == "b" and dict(r.grid_point)["data.n_particles"] == 20]
    assert [r.seed for r in b20] == [0, 1, 2]
    assert dict(b20[0].overrides) == {"model.lr": 0.01, "data.n_particles": 20, "trainer.max_epochs": 1}
    args = b20[0].cli_args()
    assert "--model.lr=0.01" in args and "--data.n_particles=20" in args and "--trainer.max_epochs=1" in args
    assert args[-1] == "--seed_everything=0"
    assert b20[0].run_dir == (tmp_path / "out" / "g" / "b__n_particles=20" / "seed_0").resolve()
    # the spec travels as data (run.json), not as argv
    b20[0].save()
    assert type(b20[0]).load(b20[0].run_dir) == b20[0]


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"seeds": []}, "seeds"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"variants": {"a": {}}, "reference": "zz"}, "reference"),
        ({"bogus": 1}, "bogus"),
        ({"base": ["conf/nope.yaml"]}, "nope.yaml"),
        ({"grid": {"data.n_particles": []}}, "grid"),
        ({"slurm": {"partiton": "gpu"}}, "partiton"),
    ],
)
def test_bad_specs_name_the_field(tmp_path, spec, field):
    path = write_spec(tmp_path, {"name": "bad", **spec})
    with pytest.raises(UserError, match=field):
        load_spec(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: twice\nvariants:\n  a: {model.lr: 0.1}\n  a: {model.lr: 0.2}\n", "key 'a' is given twice"),
        ("name: ../outside\n", "name '../outside' must be a plain folder name"),
        ("name: sub/dir\n", "name 'sub/dir' must be a plain folder name"),
        ("name: back\\slash\n", "must be a plain folder name"),
        ("name: empty\nvariants: {}\n", "variants is empty"),
        ("name: empty\nvariants:\n", "variants is empty"),
    ],
    ids=["variant_twice", "dotdot", "slash", "backslash", "empty_mapping", "empty_value"],
)
def test_sweep_files_that_would_run_the_wrong_thing_are_refused(tmp_path, text, message):
    path = tmp_path / "ablations" / "spec.yaml"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        load_spec(path)
    assert "\n" not in str(err.value)


def test_welch_p_value_and_summary():
    from scipy.stats import ttest_ind

    a, b = [1.0, 1.2, 0.9], [2.0, 2.1, 2.4]
    assert welch_p_value(a, b) == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_p_value([1.0], b) is None
    rows = [
        {"group": "full", "variant": "full", "seed": i, "test_pos_mse": v, "best_val_pos_mse": v, "model": "SET",
         "n_params": 10, "train_time_s": 1.0}
        for i, v in enumerate(a)
    ] + [
        {"group": "ablated", "variant": "ablated", "seed": i, "test_pos_mse": v, "best_val_pos_mse": v,
         "model": "SET", "n_params": 10, "train_time_s": 1.0}
        for i, v in enumerate(b)
    ]
    stats = {s.variant: s for s in summarise(rows, reference="full")}
    assert stats["ablated"].test_mean == pytest.approx(sum(b) / 3)
    assert stats["ablated"].ratio == pytest.approx(sum(b) / sum(a))
    assert stats["ablated"].p_value == pytest.approx(welch_p_value(b, a))
    assert stats["full"].p_value is None
    md = to_markdown(list(stats.values()), reference="full")
    assert "| ablated |" in md and "±" in md and "(reference)" in md


def _sweep_cmd(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "set_lightning", "sweep", str(spec), "--out", str(out)]


def test_sweep_end_to_end_kill_and_resume(tmp_path, data_cache):
    spec = write_spec(tmp_path, {
        "name": "tiny",
        "seeds": [0, 1],
        "reference": "full",
        "overrides": {**TINY, "data.cache_dir": str(data_cache)},
        "variants": {"full": {}, "no_temporal": {"model.net.init_args.temporal_attention": False}},
    })
    out = tmp_path / "runs"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [*_sweep_cmd(spec, out), "--parallel", "2"]

    # Start the sweep, kill it (and its worker) as soon as the first run has finished.
    finished = kill_after_first_result(cmd, tmp_path, out)
    assert len(finished) >= 1
    assert len(finished) < 4, "the sweep finished before it could be killed"
    before = {p: p.stat().st_mtime_ns for p in finished}

    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert f"{len(finished)} finished, {4 - len(finished)} to run" in res.stdout
    assert {p: p.stat().st_mtime_ns for p in finished} == before  # finished runs were not redone
    rows = [json.loads(l) for l in (out / "tiny" / "results.jsonl").read_text().splitlines()]
    assert sorted((r["variant"], r["seed"]) for r in rows) == [("full", 0), ("full", 1), ("no_temporal", 0), ("no_temporal", 1)]
    for r in rows:
        assert 0 < r["test_pos_mse"] < 10 and r["n_params"] > 0 and r["train_time_s"] > 0
    report = (out / "tiny" / "report.md").read_text()
    assert "| full |" in report and "| no_temporal |" in report and "(reference)" in report
    assert "Paired with `full` on the same test trajectories" in report  # per-trajectory comparison
    assert (out / "tiny" / "report.png").stat().st_size > 1000
    # TensorBoard: one run directory per config/seed, with event files.
    assert len({p.parent for p in (out / "tiny").rglob("events.out.tfevents.*")}) >= 4


def test_report_only_from_a_committed_results_file(tmp_path):
    from set_lightning.experiments.report import summarise
    from set_lightning.experiments.stats import benjamini_hochberg
    from set_lightning.experiments.sweep import read_results

    results = tmp_path / "results.jsonl"
    shutil.copy(REPO / "results" / "paper_n5_cpu" / "results.jsonl", results)
    res = subprocess.run([sys.executable, "-m", "set_lightning", "sweep", str(REPO / "ablations" / "paper_n5_cpu.yaml"),
                          "--report-only", "--results", str(results), "--out", str(tmp_path / "none")],
                         cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.png").stat().st_size > 1000 and not (tmp_path / "none").exists()
    stats = summarise(read_results(results), reference="full")
    raw = [s.p_value for s in stats]
    for s, q in zip(stats, benjamini_hochberg(raw)):
        if s.variant != "full":
            assert f"| {s.variant} |" in report and f"| {s.p_value:.3g} | {q:.3g}" in report, s.variant
    assert "BH-adjusted p" in report
    # the committed report is this report: regenerable from its results.jsonl
    assert (REPO / "results" / "paper_n5_cpu" / "report.md").read_text() == report


def test_report_plot_axis_is_linear_from_zero():
    from set_lightning.experiments.report import report_figure, summarise

    rows = [{"group": g, "variant": g, "seed": i, "test_pos_mse": v, "best_val_pos_mse": v, "model": "SET",
             "n_params": 1, "train_time_s": 1.0}
            for g, vals in (("full", [0.020, 0.022]), ("other", [0.040, 0.044])) for i, v in enumerate(vals)]
    fig = report_figure(summarise(rows, reference="full"), "t", reference="full")
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0.0
    assert any(t.get_text() == "x2.00" for t in ax.texts)


def test_vary_data_seed(tmp_path):
    from set_lightning.experiments.spec import expand, load_spec

    path = write_spec(tmp_path, {"name": "d", "seeds": [3, 4], "vary_data_seed": True})
    assert [sorted(r.cli_args()[-2:]) for r in expand(load_spec(path), tmp_path)] == [
        ["--data.seed=3", "--seed_everything=3"], ["--data.seed=4", "--seed_everything=4"]]
    path = write_spec(tmp_path, {"name": "e", "seeds": [3]})
    assert not any(a.startswith("--data.seed") for a in expand(load_spec(path), tmp_path)[0].cli_args())
