"""The study script's decisions (benchmarks/history_study.py): the learning-rate search extends past a
winning edge, each model's recipe and the history model of the ablation are chosen by validation (never
by test), and the 8T rung runs only where 4T is not converged."""

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
        self.data.append({"arm": arm, "recipe": recipe, "seed": seed, "budget_tflop": tflop,
                          "best_val_pos_mse": val, "test_pos_mse": val if test is None else test})


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


def test_the_ablation_waits_for_its_model_and_8T_runs_only_where_4T_is_not_converged(study):
    rows = study.ladder
    assert all(u is None for u in study.units("ablation"))
    for arm in hs.HEADLINE:
        for name, extra in study.recipes(arm).items():
            rows.add(arm, name, 0, 10.0, 0.01 if name == "lr=0.0005" else 0.02)
    assert {arm: study.chosen_recipe(arm) for arm in hs.HEADLINE} == dict.fromkeys(hs.HEADLINE, "lr=0.0005")
    for seed in hs.SEEDS:
        for rung, (converging, falling) in {4: (0.0100, 0.0100), 8: (0.0100, 0.0080)}.items():
            rows.add("SET L=10", "lr=0.0005", seed, 10.0 * rung, converging)
            rows.add("SET L=1", "lr=0.0005", seed, 10.0 * rung, falling)
    eight = [u for u in study.units("8T") if u is not None]
    assert {u.arm for u in eight} == {"SET L=1", "EGNN"}  # EGNN: unknown at 4T, so it runs
    assert len(eight) == 2 * len(hs.SEEDS) and {u.budget_tflop for u in eight} == {80.0}
