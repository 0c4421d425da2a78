"""The budget-ladder study: FLOP budgets, run identity, the convergence rule, the two-level bootstrap, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from set_lightning.compute import COMPILED, fingerprint, machine_info, machine_key, training_flops
from set_lightning.errors import UserError
from set_lightning.experiments.ladder import Ladder, Unit, pending
from set_lightning.experiments.ladder_report import (
    check_comparable,
    cpu_seconds,
    history_report,
)
from set_lightning.experiments.stats import (
    change_se,
    first_converged,
    hierarchical_ratio,
    ladder_verdicts,
)
from set_lightning.models import EGNN, SET

REPO = Path(__file__).resolve().parents[2]
SMALL_DATA = ["conf/data/small.yaml"]
TINY = {"config": "conf/egnn.yaml", "model.net.init_args.hidden": 8, "model.net.init_args.n_layers": 1}


# ---------------------------------------------------------------------------------------------- the ladder rule
def test_a_curve_still_falling_at_2T_is_not_converged_and_a_flat_one_is():
    falling = ladder_verdicts({10: 0.010, 20: 0.008, 40: 0.0065})
    assert [v.verdict for v in falling] == ["not converged", "not converged", "unknown"]
    assert falling[0].change == pytest.approx(-0.2)
    flat = ladder_verdicts({10: 0.010, 20: 0.0099, 40: 0.00985})
    assert [v.verdict for v in flat] == ["converged", "converged", "unknown"]
    assert first_converged(flat) == 10 and first_converged(falling) is None
    # a rung whose doubling has not run yet is unknown, whatever comes later
    gap = ladder_verdicts({10: 0.01, 40: 0.01})
    assert [v.verdict for v in gap] == ["unknown", "unknown"]
    # rising at 2T (over-fitting) by more than the tolerance: no gain, settled like a converged rung
    rising = ladder_verdicts({10: 0.010, 20: 0.011, 40: 0.0109})
    assert [v.verdict for v in rising] == ["no gain", "converged", "unknown"] and first_converged(rising) == 10
    assert ladder_verdicts({10: 0.010, 20: 0.0101})[0].verdict == "converged"  # within the tolerance either way


def test_the_change_carries_its_seed_noise():
    # no spread, no error; the error grows with the seeds' spread and shrinks with their number
    assert change_se([1.0, 1.0, 1.0], [0.9, 0.9, 0.9]) == 0.0
    few = change_se([0.9, 1.0, 1.1], [0.9, 1.0, 1.1])
    many = change_se([0.9, 1.0, 1.1] * 4, [0.9, 1.0, 1.1] * 4)
    assert few == pytest.approx(np.sqrt(2 * 0.01 / 3))  # s = 0.1 on a mean of 1, three seeds per rung
    assert many < few / 2 and change_se([0.8, 1.0, 1.2], [0.8, 1.0, 1.2]) == pytest.approx(2 * few)
    assert np.isnan(change_se([1.0], [1.0, 1.1]))
    # by simulation: the spread of the change between two rungs of 5 noisy seeds with the same mean
    rng = np.random.default_rng(0)
    draws = rng.normal(1.0, 0.15, size=(20000, 2, 5))
    changes = draws[:, 1].mean(1) / draws[:, 0].mean(1) - 1
    assert change_se(draws[0, 0], draws[0, 1]) == pytest.approx(changes.std(), rel=0.5)
    assert changes.std() > 2 * 0.02  # 15% seed noise hides a 2% tolerance at 5 seeds


# ---------------------------------------------------------------------------------------------- the bootstrap
def _seeds(rng, n_seeds, n_traj, seed_sd, scale=1.0):
    """Per-seed, per-trajectory errors: a shared trajectory difficulty times a per-seed factor."""
    difficulty = rng.gamma(2.0, 0.005, size=n_traj)
    factors = np.exp(rng.normal(0.0, seed_sd, size=(n_seeds, 1)))
    return scale * difficulty * factors * np.exp(rng.normal(0, 0.1, size=(n_seeds, n_traj)))


def test_the_hierarchical_interval_widens_with_seed_variance():
    rng = np.random.default_rng(0)
    n_traj = 400
    base = rng.gamma(2.0, 0.005, size=n_traj)
    noise = np.exp(rng.normal(0, 0.1, size=(5, n_traj)))
    widths = []
    for seed_sd in (0.0, 0.1, 0.3):
        factors = np.exp(np.linspace(-2, 2, 5) * seed_sd)[:, None]
        a = base * factors * noise
        b = base * noise[::-1]
        ci = hierarchical_ratio(a, b, n_boot=2000)
        assert ci.lo <= ci.ratio <= ci.hi
        widths.append(ci.hi - ci.lo)
    assert widths[0] < widths[1] < widths[2], widths
    assert widths[2] > 3 * widths[0]


def test_the_hierarchical_interval_finds_a_real_gap_and_covers_no_gap():
    rng = np.random.default_rng(1)
    a = _seeds(rng, 5, 500, 0.05)
    assert hierarchical_ratio(a * 1.5, a[::-1]).lo > 1.2  # 1.5x worse on the same trajectories
    same = _seeds(np.random.default_rng(2), 5, 500, 0.05)
    ci = hierarchical_ratio(same[:3], same[3:])
    assert ci.lo < 1 < ci.hi and not ci.excludes_one


def test_hierarchical_ratio_rejects_unpaired_trajectories():
    with pytest.raises(ValueError, match="same trajectories"):
        hierarchical_ratio(np.ones((3, 10)), np.ones((3, 11)))


# ---------------------------------------------------------------------------------------------- comparability
def _row(arm="A", budget=10.0, fp=(1.0, 2.0, 3.0), machine="cpu X | AVX512 | 1 thread(s) | cpu", seed=0, test=0.01,
         cpu_s=100.0, recipe="lr=0.0005", run_id=None, finished="2026-01-01T00:00:00"):
    return {"arm": arm, "recipe": recipe, "budget_tflop": budget, "fingerprint": list(fp), "machine_key": machine,
            "revision": "abc", "seed": seed, "test_pos_mse": test, "best_val_pos_mse": test, "train_cpu_s": cpu_s,
            "steps": 100, "run_id": run_id or f"{arm}-{budget}-{seed}-{fp}", "finished_at": finished, "curve": [],
            **{f"test_pos_mse_{q}": test for q in ("median", "p90", "p99", "max")}}


def test_rows_of_two_machines_are_refused_in_one_seconds_comparison():
    a = [_row(machine="AMD EPYC | AVX2 | 1 thread(s) | cpu")]
    b = [_row(arm="B", machine="Intel Xeon | AVX512 | 1 thread(s) | cpu")]
    check_comparable(a, b)  # the FLOP budget makes their MSEs comparable
    with pytest.raises(UserError, match="seconds from different machines"):
        check_comparable(a, b, seconds=True)
    assert cpu_seconds(a + b) == "mixed machines"
    assert cpu_seconds(a + [_row(seed=1, cpu_s=200.0, machine=a[0]["machine_key"])]) == "150"
    gpu = {**_row(machine="AMD EPYC | AVX2 | 1 thread(s) | NVIDIA H100"), "machine": {"clock": "wall"}}
    assert cpu_seconds([gpu]) == "100 (wall)"  # a GPU run's seconds are wall-clock seconds, and say so


def test_rows_of_two_model_functions_or_budgets_are_refused():
    with pytest.raises(UserError, match="two versions of the model's math"):
        check_comparable([_row(), _row(seed=1, fp=(1.0, 2.0, 3.5))], [_row(arm="B")])
    with pytest.raises(UserError, match="different budgets"):
        check_comparable([_row(budget=10.0)], [_row(arm="B", budget=20.0)])
    check_comparable([_row(budget=10.0)], [_row(arm="B", budget=20.0)], one_budget_each=True)  # each at its own rung
    with pytest.raises(UserError, match="different budgets"):
        check_comparable([_row(budget=10.0), _row(seed=1, budget=20.0)], [_row(arm="B")], one_budget_each=True)


# ---------------------------------------------------------------------------------------------- identity and budget
@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ladder")
    return Ladder(tmp / "results" / "study", REPO, SMALL_DATA, tmp / "runs")


def test_an_edited_variant_does_not_reuse_old_rows(ladder):
    unit = Unit("EGNN", "lr=0.0005", TINY, 0, 0.01)
    planned = ladder.plan(unit)
    assert pending(ladder, [unit]) and pending(ladder, [unit, unit]) == pending(ladder, [unit])[:1]
    ladder.rows_file.parent.mkdir(parents=True, exist_ok=True)
    ladder.rows_file.write_text(json.dumps({"run_id": planned.run_id}) + "\n")
    assert pending(ladder, [unit]) == []  # finished: skipped
    edited = Unit("EGNN", "lr=0.0005", {**TINY, "model.lr": 1e-3}, 0, 0.01)
    assert [p.unit for p in pending(ladder, [edited])] == [edited]  # same label, new config: runs again
    other_seed = Unit("EGNN", "lr=0.0005", TINY, 1, 0.01)
    other_budget = Unit("EGNN", "lr=0.0005", TINY, 0, 0.02)
    assert len({ladder.plan(u).run_id for u in (unit, edited, other_seed, other_budget)}) == 4


def test_a_compiled_unit_is_the_same_run_with_its_own_seconds(tmp_path):
    ladder = Ladder(tmp_path / "results" / "study", REPO, SMALL_DATA, tmp_path / "runs")
    eager = Unit("EGNN", "lr=0.0005", TINY, 0, 0.01)
    compiled = Unit("EGNN", "lr=0.0005", {**TINY, "model.compile": True}, 0, 0.01)
    p_eager, p_comp = ladder.plan(eager), ladder.plan(compiled)
    assert p_comp.run_id == p_eager.run_id  # the same math: an eager row counts for it (and resumes it)
    machine = {**machine_info(), "threads": 1}
    row = ladder.row(p_comp, {"n_params": 1, "epochs": 1, "best_val_pos_mse": 0.1, "test_pos_mse": 0.1, "test": {}},
                     [{"step": p_comp.max_steps, "train_s": 2.0}], machine)
    assert row["machine"]["compiled"] and row["machine_key"] == machine_key(machine) + COMPILED
    key = machine_key(machine)
    ladder.rows_file.parent.mkdir(parents=True, exist_ok=True)
    eager_row = {**row, "machine_key": key, "train_cpu_s": 4.0}
    ladder.rows_file.write_text(json.dumps(eager_row) + "\n")
    # no compiled row yet: the eager rate; then its own
    assert ladder.estimate_s(p_comp, key) == ladder.estimate_s(p_eager, key) == 1.25 * 4.0
    ladder.rows_file.write_text(json.dumps(eager_row) + "\n" + json.dumps(row) + "\n")
    assert ladder.estimate_s(p_comp, key) == 1.25 * 2.0 and ladder.estimate_s(p_eager, key) == 1.25 * 4.0


def test_the_budget_is_steps_from_pinned_flops_per_step(ladder):
    unit = Unit("EGNN", "lr=0.0005", TINY, 0, 0.05)
    planned = ladder.plan(unit)
    net = EGNN(hidden=8, n_layers=1)
    assert planned.flops_per_step == training_flops(net, batch=50, history=1, n=5)
    assert planned.max_steps % (planned.steps_per_epoch * planned.val_every) == 0
    assert abs(planned.tflop - 0.05) <= planned.steps_per_epoch * planned.val_every * planned.flops_per_step / 1e12
    # a later revision that counts other FLOPs (a faster form of the same math) keeps the pinned count
    table = json.loads(ladder.flops_file.read_text())
    (key,) = [k for k, v in table.items() if v == planned.flops_per_step]
    table[key] = 2 * planned.flops_per_step
    ladder.flops_file.write_text(json.dumps(table))
    again = ladder.plan(unit)
    assert again.flops_per_step == 2 * planned.flops_per_step and again.max_steps < planned.max_steps
    assert again.run_id == planned.run_id  # same config, budget and function: the same run


def test_the_fingerprint_sees_the_math_not_the_seed_or_the_speed():
    cfg = {"class_path": "set_lightning.models.SET", "init_args": {"hidden": 8, "n_blocks": 1, "n_spatial_layers": 1,
                                                                   "n_heads": 2}}
    fp = fingerprint(cfg, history=3, n=4)
    assert fingerprint(cfg, history=3, n=4) == fp  # deterministic, whatever the global seed
    changed = {**cfg, "init_args": {**cfg["init_args"], "readout": "last"}}
    assert fingerprint(changed, history=3, n=4) != fp
    assert len(fp) == 3 and all(np.isfinite(fp))
    net = SET(hidden=8, n_blocks=1, n_spatial_layers=1, n_heads=2)
    assert training_flops(net, batch=4, history=3, n=4) > 0


def test_machine_info_records_what_a_timed_row_needs():
    info = machine_info()
    assert {"cpu", "cpu_capability", "threads", "torch", "device", "revision"} <= set(info)
    assert info["device"] == "cpu" and info["cpu"]
    assert info["cpu_capability"] in machine_key(info)


# ---------------------------------------------------------------------------------------------- the report
def test_the_report_tables_the_ladder_and_leaves_stale_rows_out(tmp_path):
    out = tmp_path / "study"
    base = np.random.default_rng(0).gamma(2.0, 0.004, size=50)
    rows, per = [], []
    for arm, scale in (("SET L=10", 0.6), ("SET L=1", 1.0), ("EGNN", 1.2)):
        for budget, gain in ((10.0, 1.0), (20.0, 0.8 if arm == "SET L=10" else 0.995)):
            for seed in range(3):
                errs = scale * gain * (1 + 0.01 * seed) * base
                r = _row(arm=arm, budget=budget, seed=seed, test=float(errs.mean()), run_id=f"{arm}{budget}{seed}")
                r["best_val_pos_mse"] = float(errs.mean())
                rows.append(r)
                per.append({"run_id": r["run_id"], "pos_mse": errs.tolist()})
    stale = _row(arm="EGNN", budget=10.0, seed=0, fp=(9.0, 9.0, 9.0), test=5.0, run_id="old",
                 finished="2025-01-01T00:00:00")
    rows.append(stale)
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "study_per_traj.jsonl").write_text("".join(json.dumps(p) + "\n" for p in per))
    text = history_report(out, t=10.0, headline=("SET L=10", "SET L=1", "EGNN"))
    assert "1 row(s) of an older model function" in text
    ladder_lines = [line for line in text.splitlines() if line.startswith("| SET L=10 | lr=0.0005 | 10 |")]
    assert len(ladder_lines) == 1 and "not converged (-20.0% ± 0.6% at 20)" in ladder_lines[0]
    assert any(line.startswith("| SET L=1 | lr=0.0005 | 10 |") and "| converged" in line for line in text.splitlines())
    comp = [line for line in text.splitlines() if line.startswith("| 20 | SET L=10 | SET L=1 |")]
    assert len(comp) == 1
    ratio = float(comp[0].split("|")[5])
    assert 0.4 < ratio < 0.6  # 0.6 * 0.8 / (1.0 * 0.995)
    assert "5.0" not in text.split("## The ladder")[1].split("## Comparisons")[0]  # the stale row is not averaged
    assert out.with_suffix(".png").is_file()


def test_runs_that_shared_a_gpu_have_their_own_seconds_key(tmp_path):
    info = {**machine_info("cpu"), "threads": 1}
    assert machine_key({**info, "gpu_shared_by": 4}) == machine_key(info) + " shared by 4"
    assert machine_key({**info, "gpu_shared_by": 1}) == machine_key(info)


def test_a_unit_runs_end_to_end_and_is_then_skipped(tmp_path, data_cache):
    ladder = Ladder(tmp_path / "results" / "study", REPO, SMALL_DATA, tmp_path / "runs")
    unit = Unit("EGNN", "lr=0.0005", {**TINY, "data.cache_dir": str(data_cache), "data.n_train": 100,
                                      "data.n_val": 50, "data.n_test": 50}, 0, 1e-7)
    (planned,) = pending(ladder, [unit])
    statuses = []
    ladder.run_all([planned], parallel=1, log=statuses.append)
    assert len(statuses) == 1 and statuses[0].startswith("done EGNN"), statuses
    (row,) = ladder.rows()
    assert row["run_id"] == planned.run_id and row["steps"] == planned.max_steps == 2  # one epoch of 2 batches
    assert row["machine"]["cpu_capability"] and row["machine"]["threads"] == 1
    assert row["machine"]["device"] == "cpu" and row["machine"]["clock"] == "process"  # where and how it was timed
    assert row["curve"] and row["curve"][-1]["step"] == row["steps"]  # the last validation is at the end
    assert np.isfinite(row["test_pos_mse"]) and row["fingerprint"] == planned.fingerprint
    per = [json.loads(line) for line in ladder.per_traj_file.read_text().splitlines()]
    assert per[0]["run_id"] == planned.run_id and len(per[0]["pos_mse"]) == 50
    assert pending(ladder, [unit]) == []


def test_a_rung_still_running_is_not_judged_from_its_first_seeds(tmp_path):
    out = tmp_path / "study"
    rows = [_row(arm="SET L=10", budget=10.0, seed=s, test=0.010 + 0.001 * s) for s in range(3)]
    rows.append(_row(arm="SET L=10", budget=20.0, seed=0, test=0.0101))  # would read "converged" on its own
    per = [{"run_id": r["run_id"], "pos_mse": [r["test_pos_mse"]] * 4} for r in rows]
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "study_per_traj.jsonl").write_text("".join(json.dumps(p) + "\n" for p in per))
    text = history_report(out, t=10.0, headline=("SET L=10",))
    line = next(line for line in text.splitlines() if line.startswith("| SET L=10 | lr=0.0005 | 10 |"))
    assert "unknown (20: 1 of 3 seeds)" in line and "converged" not in line
    rows += [_row(arm="SET L=10", budget=20.0, seed=s, test=0.0101 + 0.001 * s) for s in (1, 2)]
    per = [{"run_id": r["run_id"], "pos_mse": [r["test_pos_mse"]] * 4} for r in rows]
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "study_per_traj.jsonl").write_text("".join(json.dumps(p) + "\n" for p in per))
    line = next(line for line in history_report(out, t=10.0, headline=("SET L=10",)).splitlines()
                if line.startswith("| SET L=10 | lr=0.0005 | 10 |"))
    assert "| converged (+0.9%" in line


def test_the_report_says_no_gain_and_does_not_leave_a_rung_above_a_settled_one_pending(tmp_path):
    out = tmp_path / "study"
    rows = [_row(arm="SET L=1", budget=b, seed=s, test=v + 0.0001 * s)
            for b, v in ((10.0, 0.0100), (20.0, 0.0110)) for s in range(3)]  # worse at 2T: no gain at T
    per = [{"run_id": r["run_id"], "pos_mse": [r["test_pos_mse"]] * 4} for r in rows]
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "study_per_traj.jsonl").write_text("".join(json.dumps(p) + "\n" for p in per))
    lines = history_report(out, t=10.0, headline=("SET L=1",)).splitlines()
    at = {b: next(line for line in lines if line.startswith(f"| SET L=1 | lr=0.0005 | {b} |")) for b in (10, 20)}
    assert "| no gain (+9.9%" in at[10]
    assert "not climbed further (settled at 10)" in at[20] and "unknown" not in at[20]


def test_the_answer_compares_each_model_at_its_own_settled_rung(tmp_path):
    out = tmp_path / "study"
    curves = {"SET L=10": ((10.0, 0.0080), (20.0, 0.0060), (40.0, 0.0060)),  # settles at 20 (converged)
              "SET L=1": ((10.0, 0.0100), (20.0, 0.0110)),  # settles at 10 (no gain)
              "EGNN": ((10.0, 0.0120), (20.0, 0.0100))}  # still improving: not in the answer
    rows = [_row(arm=arm, budget=b, seed=s, test=v * (1 + 0.01 * s), run_id=f"{arm}-{b}-{s}")
            for arm, curve in curves.items() for b, v in curve for s in range(3)]
    per = [{"run_id": r["run_id"], "pos_mse": [r["test_pos_mse"] * (1 + 0.1 * k) for k in range(4)]} for r in rows]
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "study_per_traj.jsonl").write_text("".join(json.dumps(p) + "\n" for p in per))
    text = history_report(out, t=10.0, headline=("SET L=10", "SET L=1", "EGNN"))
    section = text.split("## At convergence")[1].split("\n## ")[0]
    (line,) = [line for line in section.splitlines() if line.startswith("| SET L=10 |") and "| SET L=1 |" in line]
    assert "| 20 (converged) | SET L=1 | 10 (no gain) | 3 / 3 | 0.600 |" in line  # 0.0060 / 0.0100
    # EGNN is still improving at its top complete rung: shown there, provisionally
    egnn = [line for line in section.splitlines() if "| EGNN | " in line]
    assert len(egnn) == 2 and all("| EGNN | 20 (still improving) |" in line for line in egnn)
    assert "Not judged yet" not in section
    rows.append(_row(arm="EGNN", budget=40.0, seed=0, test=0.0090, run_id="EGNN-40-0"))  # 40 incomplete ...
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = history_report(out, t=10.0, headline=("SET L=10", "SET L=1", "EGNN"))
    assert "| EGNN | 20 (still improving) |" in text.split("## At convergence")[1]  # ... so 20 is still its top
