"""The study script's decisions (benchmarks/history_study.py): the learning-rate search extends past a
winning edge, each model's recipe and the history model of the ablation are chosen by validation (never
by test), and the ladder climbs a model (4T, 8T) only while doubling its budget pays."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import history_study as hs  # noqa: E402


class Rows:
    """A ladder stand-in: the study only reads its rows."""

    def __init__(self) -> None:
        self.data: list[dict] = []

    def rows(self) -> list[dict]:
        return self.data

    def add(self, arm: str, recipe: str, seed: int, tflop: float, val: float, test: float | None = None) -> None:
        self.data.append({"arm": arm, "recipe": recipe, "seed": seed, "budget_tflop": tflop, "fingerprint": [1.0],
                          "best_val_pos_mse": val, "test_pos_mse": val if test is None else test,
                          "finished_at": f"{len(self.data):06d}"})


@pytest.fixture
def study() -> hs.Study:
    return hs.Study(Rows(), 10.0)


def test_the_search_extends_past_a_winning_edge_and_stops_inside(study):
    rows = study.ladder
    assert set(study.recipes("SET L=10")) == {"lr=0.00025", "lr=0.0005", "lr=0.001"}
    for name, val in (("lr=0.00025", 0.009), ("lr=0.0005", 0.008), ("lr=0.001", 0.006)):
        rows.add("SET L=10", name, 0, 10.0, val)
    assert study.chosen_recipe("SET L=10") is None  # the best is the highest rate: try twice it first
    assert "lr=0.002" in study.recipes("SET L=10")
    rows.add("SET L=10", "lr=0.002", 0, 10.0, 0.007)  # worse: the search ends inside its range
    assert set(study.recipes("SET L=10")) == {"lr=0.00025", "lr=0.0005", "lr=0.001", "lr=0.002"}
    assert study.chosen_recipe("SET L=10") == "lr=0.001"
    # downwards too, and never past the limits
    for name, val in (("lr=0.00025", 0.005), ("lr=0.0005", 0.008), ("lr=0.001", 0.009)):
        rows.add("SET L=1", name, 0, 10.0, val)
    assert "lr=0.000125" in study.recipes("SET L=1")
    lr = 1.25e-4
    while lr >= hs.LR_LIMITS[0]:
        rows.add("SET L=1", f"lr={lr:g}", 0, 10.0, lr)  # always better: the search walks to the limit
        lr /= 2
    assert min(e["model.lr"] for e in study.recipes("SET L=1").values()) >= hs.LR_LIMITS[0]
    assert study.chosen_recipe("SET L=1") == f"lr={2 * lr:g}"


def test_recipes_and_the_ablation_model_are_chosen_by_validation_not_test(study):
    rows = study.ladder
    for name, val, test in (("lr=0.00025", 0.009, 0.001), ("lr=0.0005", 0.006, 0.009), ("lr=0.001", 0.007, 0.009)):
        rows.add("SET L=10", name, 0, 10.0, val, test)
    assert study.chosen_recipe("SET L=10") == "lr=0.0005"
    for seed in hs.SEEDS:
        rows.add("SET L=10", "lr=0.0005", seed, 10.0, 0.0050, test=0.0060)
        rows.add("SET L=10, last readout", "lr=0.0005", seed, 10.0, 0.0055, test=0.0040)
    assert study.best_history_arm() == "SET L=10"  # lower validation; the other's better test is not read


def _chosen(study: hs.Study) -> None:
    for arm in hs.HEADLINE:
        for name in study.recipes(arm):
            study.ladder.add(arm, name, 0, 10.0, 0.01 if name == "lr=0.0005" else 0.02)
    assert {arm: study.chosen_recipe(arm) for arm in hs.HEADLINE} == dict.fromkeys(hs.HEADLINE, "lr=0.0005")


def _rung(study: hs.Study, arm: str, rung: int, val: float, seeds=hs.SEEDS) -> None:
    for seed in seeds:
        study.ladder.add(arm, "lr=0.0005", seed, 10.0 * rung, val)


def test_the_ladder_climbs_only_the_models_still_improving(study):
    _chosen(study)
    assert all(u is None for u in study.units("4T")) and all(u is None for u in study.units("8T"))
    arms = {"SET L=10": (0.0100, 0.0090, 0.0080, 0.0079),  # falling at 2T and 4T, flat at 8T
            "SET L=1": (0.0100, 0.0110, 0.0200, 0.0300),  # worse at 2T: over-fits, no gain
            "EGNN": (0.0100, 0.0099, 0.0050, 0.0040)}  # flat at 2T: converged at T (what follows is not run)
    for arm, curve in arms.items():
        _rung(study, arm, 1, curve[0])
        _rung(study, arm, 2, curve[1], seeds=hs.SEEDS[:-1])  # 2T incomplete: every verdict at T waits
    assert [u for u in study.units("4T") if u is not None] == []
    for arm, curve in arms.items():
        _rung(study, arm, 2, curve[1], seeds=hs.SEEDS[-1:])
    four = study.units("4T")
    # SET L=10 climbs; the last readout arm has no rows (waits); SET L=1 (no gain) and EGNN (converged) stop
    assert {u.arm for u in four if u is not None} == {"SET L=10"} and sum(u is None for u in four) == len(hs.SEEDS)
    assert {u.budget_tflop for u in four if u is not None} == {40.0} and len(four) == 2 * len(hs.SEEDS)
    assert study.units("8T") == [None] * (2 * len(hs.SEEDS))  # SET L=10 waits for 4T, the readout arm for its rows
    _rung(study, "SET L=10", 4, arms["SET L=10"][2])
    eight = [u for u in study.units("8T") if u is not None]
    assert {u.arm for u in eight} == {"SET L=10"} and {u.budget_tflop for u in eight} == {80.0}
    # the settled arms never wait for rungs they will not run
    assert sum(u is None for u in study.units("8T")) == len(hs.SEEDS)  # only the readout arm, still unknown


def test_the_ablation_waits_for_its_model_and_runs_at_its_first_settled_rung(study):
    assert all(u is None for u in study.units("ablation"))
    _chosen(study)
    for arm, val in (("SET L=10", 0.0050), ("SET L=10, last readout", 0.0070)):
        _rung(study, arm, 1, val)
    assert all(u is None for u in study.units("ablation"))  # its climb has not started: wait
    for rung, val in ((2, 0.0045), (4, 0.0040)):
        _rung(study, "SET L=10", rung, val)
    assert all(u is None for u in study.units("ablation"))  # still improving at 4T: wait for 8T
    _rung(study, "SET L=10", 8, 0.0041)  # no better at 8T: settled at 4T
    units = study.units("ablation")
    assert all(u is not None for u in units) and {u.budget_tflop for u in units} == {40.0}
    assert len(units) == len(hs.FLIPS) * len(hs.ABLATION_SEEDS) and all(u.arm.startswith("SET L=10: ") for u in units)
    _rung(study, "SET L=10", 8, 0.0030)  # had 8T kept improving (the mean of both runs: 4T still not converged)
    assert {u.budget_tflop for u in study.units("ablation")} == {80.0}  # ... the top rung


def test_a_seed_run_twice_counts_once_in_the_ladder(study):
    _chosen(study)
    _rung(study, "SET L=10", 1, 0.0100, seeds=hs.SEEDS[1:])
    study.ladder.add("SET L=10", "lr=0.0005", 0, 10.0, 0.0050)  # seed 0 again (another machine): the newest counts
    assert study.full_rung_means("SET L=10")[10.0] == pytest.approx((0.0050 + 4 * 0.0100) / 5)


def test_a_model_ships_as_final_only_from_its_settled_rung(study):
    import ship_models

    _chosen(study)
    _rung(study, "SET L=10", 1, 0.0100)
    _rung(study, "SET L=10", 2, 0.0090)  # still improving at T
    status = ship_models.ship_status(study, "SET L=10", "SET L=10", 20.0, 5, 10.0)
    assert status.startswith("recipe final") and "provisional" in status
    with pytest.raises(SystemExit, match="still improving and its top complete rung is 20 TFLOP"):
        ship_models.ship_status(study, "SET L=10", "SET L=10", 10.0, 5, 10.0)  # below its best rung: refused
    _rung(study, "SET L=10", 4, 0.0091)  # flat from 2T: converged at 20
    assert ship_models.ship_status(study, "SET L=10", "SET L=10", 20.0, 5, 10.0).startswith(
        "final: the study's answer for this model, which settled at 20 TFLOP (converged: +1.1% at 40)")
    with pytest.raises(SystemExit, match="settled at 20 TFLOP.*ship it with --tflop 20"):
        ship_models.ship_status(study, "SET L=10", "SET L=10", 40.0, 5, 10.0)


def test_the_size_arm_runs_in_groups_of_three_seeds_with_both_rungs_of_a_group_first():
    for size_seeds, n_units in ((3, 12), (5, 20)):
        study = hs.Study(Rows(), 10.0, size_seeds=size_seeds)
        for arm in ("SET L=10", "SET L=1"):  # the small models take their shipped-size arm's recipe
            for name, val in (("lr=0.00025", 0.009), ("lr=0.0005", 0.006), ("lr=0.001", 0.007)):
                study.ladder.add(arm, name, 0, 10.0, val)
        units = [u for u in study.units("size") if u is not None]  # the climb past 20 waits for their rows
        assert len(units) == n_units
        assert {u.recipe for u in units} == {"lr=0.0005"}
        order = [(u.seed, u.budget_tflop) for u in units]
        assert sorted({s for s, _ in order}) == list(range(size_seeds))
        first = order[:12]  # seeds 0-2 at 10 and 20 TFLOP before any other seed
        assert {s for s, _ in first} == {0, 1, 2} and {b for _, b in first} == {10.0, 20.0}


def test_the_size_arm_climbs_while_doubling_pays_as_the_headline_does():
    study = hs.Study(Rows(), 10.0, size_seeds=3)
    rows = study.ladder
    for arm in ("SET L=10", "SET L=1"):
        for name, val in (("lr=0.00025", 0.009), ("lr=0.0005", 0.006), ("lr=0.001", 0.007)):
            rows.add(arm, name, 0, 10.0, val)
    small10, small1 = hs.SMALL_ARMS
    for s in range(3):
        rows.add(small10, "lr=0.0005", s, 10.0, 0.0150)
        rows.add(small10, "lr=0.0005", s, 20.0, 0.0140)  # -6.7%: not converged at 10, so 40 runs
        rows.add(small1, "lr=0.0005", s, 10.0, 0.0260)
    units = study.units("size")
    assert None in units  # the single-frame small model's verdict waits for its 20 TFLOP rows
    assert sorted(u.seed for u in units if u and u.budget_tflop == 40.0 and u.arm == small10) == [0, 1, 2]
    for s in range(3):
        rows.add(small1, "lr=0.0005", s, 20.0, 0.0261)  # converged at 10: no higher rung
    units = study.units("size")
    assert not any(u and u.arm == small1 and u.budget_tflop > 20.0 for u in units)
    assert units.count(None) == 3  # 80 waits for the history model's 40 TFLOP verdict
    for s in range(3):
        rows.add(small10, "lr=0.0005", s, 40.0, 0.0139)  # converged at 20: the climb stops
    assert None not in study.units("size")
    assert max(u.budget_tflop for u in study.units("size")) == 40.0
