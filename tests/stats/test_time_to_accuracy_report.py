"""The time-to-accuracy report on a synthetic study whose answers are known: seconds to each
threshold, plateau, mean ± std, Welch p, the paired ratio on shared trajectories, the plot's panels."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from set_lightning.experiments.stats import welch_p_value
from set_lightning.experiments.tta_report import time_to_accuracy_report

BUDGET = 100.0
#: model -> seed -> (val curve as (train_s, val_pos_mse), test_pos_mse); per-trajectory errors below
CURVES = {
    "A": {0: ([(10, 0.05), (30, 0.009), (60, 0.007), (90, 0.0069)], 0.0070),
          1: ([(10, 0.04), (50, 0.0095), (85, 0.0090)], 0.0092)},
    "B": {0: ([(5, 0.02), (20, 0.012), (95, 1e3)], 0.0120),  # a divergence spike at the end
          1: ([(5, 0.03), (40, 0.011), (70, 0.0105)], 0.0110)},
}


def _write_study(out, n_traj: int = 400):
    rng = np.random.default_rng(0)
    base = rng.exponential(0.01, n_traj)
    rows, per = [], []
    for m, seeds in CURVES.items():
        config = {"args": [f"--model={m}"], "budget_s": BUDGET, "clock": "process"}
        for seed, (curve, test) in seeds.items():
            for epoch, (t, v) in enumerate(curve):
                rows.append({"model": m, "seed": seed, "config": config, "epoch": epoch, "train_s": t,
                             "val_pos_mse": v})
            rows.append({"model": m, "seed": seed, "config": config, "final": True, "budget_s": BUDGET,
                         "n_params": 10 if m == "A" else 20, "epochs": 4, "test_pos_mse": test,
                         "best_val_pos_mse": min(v for _, v in curve), "test_pos_mse_median": test / 2,
                         "test_close_frac": 0.1})
            scale = 1.0 if m == "A" else 1.5  # B errs 1.5x A on every trajectory
            per.append({"model": m, "seed": seed, "config": config, "pos_mse": (scale * base).tolist()})
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out.parent / f"{out.name}_per_traj.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per))


def _row(text: str, section: int, model: str) -> list[str]:
    part = text.split("\n## ")[section]
    line = next(l for l in part.splitlines() if l.startswith(f"| {model} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_tables_carry_the_known_answers(tmp_path):
    out = tmp_path / "tta"
    _write_study(out)
    text = time_to_accuracy_report(out, [("Headline", ["A", "B"], "A"), ("B alone", ["B"], "B")],
                                   thresholds=(0.01, 0.008))
    assert (tmp_path / "tta.md").read_text() == text
    a, b = _row(text, 1, "A"), _row(text, 1, "B")
    # model | params | seeds | budget | epochs | s to 0.01 | s to 0.008 | plateau | best val | test | Welch
    assert a[1:5] == ["10", "2", "100", "4"]
    assert a[5] == "40 (2/2)" and a[6] == "60 (1/2)"  # seed 0 at 30 s and seed 1 at 50 s; only seed 0 reaches 0.008
    assert b[5] == "– (0/2)"
    # plateau: best before 80 s against best at the end: A seed 0 (0.007 -> 0.0069), seed 1 (0.0095 -> 0.009)
    assert a[7] == f"{100 * np.mean([0.0001 / 0.007, 0.0005 / 0.0095]):.1f}%"
    assert a[9] == f"{np.mean([0.0070, 0.0092]):.5f} ± {np.std([0.0070, 0.0092], ddof=1):.5f}"
    p = welch_p_value([0.0120, 0.0110], [0.0070, 0.0092])
    assert a[10] == "(reference)" and b[10] == f"{p:.3g} ({p:.3g})"  # one comparison: BH leaves p as it is
    # the paired table: B is exactly 1.5x A on every trajectory, and worse on all of them
    paired = [l for l in text.split("\n## ")[1].splitlines() if l.startswith("| B |")][-1]  # the last B row
    assert "| 1.500 [1.500, 1.500] |" in paired and paired.endswith("| 0% |")
    # the second section has no reference to pair with and says so by its absence
    assert "Paired with" not in text.split("\n## ")[2]


def test_the_plot_has_one_panel_per_section(tmp_path):
    out = tmp_path / "tta"
    _write_study(out)
    time_to_accuracy_report(out, [("Headline", ["A", "B"], "A"), ("B alone", ["B"], "B")])
    width, height = Image.open(tmp_path / "tta.png").size
    assert width > 2 * height  # two panels side by side
    time_to_accuracy_report(out, [("Headline", ["A", "B"], "A")])
    width, height = Image.open(tmp_path / "tta.png").size
    assert width < 2 * height


def test_without_per_trajectory_errors_the_paired_table_is_left_out(tmp_path):
    out = tmp_path / "tta"
    _write_study(out)
    (tmp_path / "tta_per_traj.jsonl").write_text("")
    text = time_to_accuracy_report(out, [("Headline", ["A", "B"], "A")])
    assert "Paired with" not in text and "| B |" in text


def test_the_benchmark_runs_its_units_through_the_local_runner(tmp_path, monkeypatch, capsys):
    """benchmarks/time_to_accuracy.py hands its runs to run_local (its worker command, one thread each) and
    records a finished run's rows; a run that left no result is one FAILED line and no row."""
    from benchmarks import time_to_accuracy as tta
    from set_lightning.experiments import local

    seen = []

    def fake_execute(run, env, command):  # stands in for the worker process
        cmd = command(run)
        seen.append((cmd[1:], env["OMP_NUM_THREADS"]))
        if run.seed == 1:
            return run, None, "exit code 1; see stdout.log"
        (run.run_dir / "curve.jsonl").parent.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "curve.jsonl").write_text(json.dumps({"step": 3, "train_s": 1.0, "pos_mse": 0.5}) + "\n")
        (run.run_dir / "per_traj_test.json").write_text(json.dumps({"pos_mse": [0.1, 0.2]}))
        result = {"n_params": 7, "epochs": 1, "best_epoch": 0, "best_val_pos_mse": 0.5, "test_pos_mse": 0.15,
                  "test": {"pos_mse": 0.15, "vel_mse": 0.3}}
        (run.run_dir / "result.json").write_text(json.dumps(result))
        return run, result, ""

    monkeypatch.setattr(local, "_execute", fake_execute)
    study, variant, out = tta.STUDIES["nbody5"], tta.VARIANTS["EGNN"], tmp_path / "results" / "tta"
    out.parent.mkdir()
    tta.run_units(study, [("EGNN", variant, 0), ("EGNN", variant, 1)], 6.0, "process", out, tmp_path / "runs", 1)
    assert sorted(seen) == [([tta.__file__, "--worker", str(tmp_path / "runs" / "egnn" / f"seed_{s}"), "--budget-s",
                              "6.0", "--clock", "process"], "1") for s in (0, 1)]
    printed = capsys.readouterr().out
    assert "done EGNN seed 0: test 0.15000 after 1 epochs" in printed
    assert "FAILED EGNN seed 1: exit code 1" in printed
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    config = {"variant": variant, "budget_s": 6.0, "clock": "process"}
    assert rows == [{"model": "EGNN", "config": config, "seed": 0, "val_pos_mse": 0.5, "step": 3, "train_s": 1.0},
                    {"final": True, "model": "EGNN", "config": config, "seed": 0, "budget_s": 6.0, "n_params": 7,
                     "epochs": 1, "best_epoch": 0, "best_val_pos_mse": 0.5, "test_pos_mse": 0.15,
                     "test_vel_mse": 0.3}]
