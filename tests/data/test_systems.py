"""NBodyDataModule with ``system: springs | gravity``: samples, frames, seeding, cache keys and validation."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import set_lightning.data.specs as specs_mod
from set_lightning.data import (
    CacheWarning,
    GravitySpec,
    NBodyDataModule,
    SpringsSpec,
    TrajectorySpec,
    sample_gravity,
    sample_springs,
    simulate_springs,
    split_seed,
)

# 9 saved frames for springs (0..8), 10 for gravity (0..9); input frame 4, target frame 7.
SMALL = {
    "n_train": 5, "n_val": 3, "n_test": 4, "steps": 1000, "sample_freq": 100, "input_frame": 4, "target_frame": 7,
    "batch_size": 4,
}


def _dm(tmp_path: Path, system: str, **kwargs) -> NBodyDataModule:
    dm = NBodyDataModule(**{**SMALL, "system": system, "cache_dir": str(tmp_path), **kwargs})
    dm.prepare_data()
    dm.setup()
    return dm


def test_springs_samples_carry_the_spring_graph(tmp_path):
    dm = _dm(tmp_path, "springs", history=3)
    assert dm.n_frames == 9
    traj = dm.trajectories("val")
    item = dm.datasets["val"][1]
    assert set(item) == {"x", "v", "charges", "x_target", "v_target", "min_dist", "edge_attr"}
    assert torch.equal(item["x"], traj.x[1, 2:5].float()) and torch.equal(item["v_target"], traj.v[1, 7].float())
    assert torch.equal(item["charges"], torch.ones(5, 1))  # unit masses
    assert torch.equal(item["edge_attr"], traj.edge_attr[1].float())
    batch = next(iter(dm.train_dataloader()))
    assert batch["edge_attr"].shape == (4, 5, 5) and batch["x"].shape == (4, 3, 5, 3)
    graph = dm.trajectories("train").edge_attr
    assert torch.equal(graph, graph.transpose(1, 2)) and set(graph.unique().tolist()) <= {0.0, 1.0}
    # the cached trajectories are the simulation of the split's seeded draws
    x0, v0, adjacency = sample_springs(3, 5, torch.Generator().manual_seed(split_seed(0, "val", "springs")))
    assert torch.equal(traj.edge_attr, adjacency)
    assert torch.equal(traj.x, simulate_springs(x0, v0, adjacency, steps=1000)[0])


def test_gravity_frames_start_at_the_initial_state_and_masses_are_charges(tmp_path):
    dm = _dm(tmp_path, "gravity", n_particles=6, mass_range=[0.1, 1.0], history=2)
    assert dm.n_frames == 10
    traj = dm.trajectories("test")
    x0, v0, masses = sample_gravity(
        4, 6, torch.Generator().manual_seed(split_seed(0, "test", "gravity")), mass_range=(0.1, 1.0)
    )
    assert torch.equal(traj.x[:, 0], x0) and torch.equal(traj.v[:, 0], v0) and torch.equal(traj.charges, masses)
    item = dm.datasets["test"][3]
    assert set(item) == {"x", "v", "charges", "x_target", "v_target", "min_dist"}
    assert torch.equal(item["x"], traj.x[3, 3:5].float()) and torch.equal(item["x_target"], traj.x[3, 7].float())
    assert torch.equal(item["charges"], masses[3].float())


def test_gravity_can_target_its_last_frame(tmp_path):
    dm = _dm(tmp_path, "gravity", n_particles=3, target_frame=9)  # 10 frames: 0..9
    assert dm.datasets["train"].x_target.shape == (5, 3, 3)
    last_of_10 = r"^target_frame must be <= 9 \(the last of the 10 frames saved with system=gravity"
    with pytest.raises(ValueError, match=last_of_10):
        NBodyDataModule(**{**SMALL, "system": "gravity", "target_frame": 10})
    with pytest.raises(ValueError, match=r"^target_frame must be <= 8 "):
        NBodyDataModule(**{**SMALL, "system": "springs", "target_frame": 9})


def test_systems_have_separate_cache_files_and_seeds(tmp_path):
    files = {}
    for system in ("charged", "springs", "gravity"):
        dm = _dm(tmp_path, system)
        name = dm.spec("train").filename()
        assert name.startswith(f"{system}_train_N5_n5_steps1000_freq100_dt0.001_seed0_")
        files[system] = dm.trajectories("train").x[:, 1]
    assert len(list(tmp_path.glob("*.pt"))) == 9
    assert not torch.equal(files["springs"], files["gravity"]) and not torch.equal(files["charged"], files["springs"])


def test_charged_default_keys_are_unchanged(monkeypatch):
    """The charged keys depend on the parameters and the simulators' code only (pinned for a fixed code
    version): adding systems and options did not change them."""

    monkeypatch.setattr(specs_mod, "SIMULATOR_CODE", "0" * 16)
    assert TrajectorySpec(split="train", count=3000, n_particles=5).filename() == (
        "charged_train_N5_n3000_steps5000_freq100_dt0.001_seed0_92cfdffbd8c19a8d.pt"
    )
    assert TrajectorySpec(split="test", count=2000, n_particles=5).key() == "3a830ae05c5f3da9"
    assert NBodyDataModule().spec("val") == TrajectorySpec(split="val", count=2000, n_particles=5)
    assert NBodyDataModule(interaction_strength=1.0).spec("val").key() == "bc1cfc99c1f3fe70"


@pytest.mark.parametrize("spec_cls", [SpringsSpec, GravitySpec])
def test_spec_key_covers_every_parameter(spec_cls):
    base = spec_cls(split="train", count=10, n_particles=5)
    keys = {base.key()}
    for field in dataclasses.fields(spec_cls):
        value = getattr(base, field.name)
        if field.name == "split":
            changed = "val"
        elif isinstance(value, tuple):
            changed = (0.5, 2.0)
        elif field.name in ("steps",):
            changed = value * 2
        else:
            changed = value + 1 if isinstance(value, int) else value * 1.5
        keys.add(dataclasses.replace(base, **{field.name: changed}).key())
    assert len(keys) == len(dataclasses.fields(spec_cls)) + 1
    assert base.metadata()["system"] == spec_cls.system
    assert spec_cls(split="train", count=10, n_particles=5, dt=1).key() == spec_cls(
        split="train", count=10, n_particles=5, dt=1.0).key()


def test_cache_hit_and_miss_per_system_option(tmp_path, monkeypatch):
    _dm(tmp_path, "springs")
    _dm(tmp_path, "gravity")
    assert len(list(tmp_path.glob("*.pt"))) == 6

    def boom(*args, **kwargs):
        raise AssertionError("simulated again despite a valid cache file")

    monkeypatch.setattr(specs_mod, "simulate_springs", boom)
    monkeypatch.setattr(specs_mod, "simulate_gravity", boom)
    _dm(tmp_path, "springs", history=2, spring_prob=0.5, interaction_strength=0.1)  # the defaults, spelled out
    _dm(tmp_path, "gravity", batch_size=2, softening=0.1, mass_range=[1.0, 1.0])
    monkeypatch.undo()
    for system, option in (("springs", {"spring_prob": 0.3}), ("springs", {"interaction_strength": 0.2}),
                           ("gravity", {"softening": 0.2}), ("gravity", {"mass_range": [0.1, 1.0]}),
                           ("gravity", {"interaction_strength": 2.0})):
        before = len(list(tmp_path.glob("*.pt")))
        _dm(tmp_path, system, **option)
        assert len(list(tmp_path.glob("*.pt"))) == before + 3, option


def test_springs_cache_file_is_verified(tmp_path):
    dm = _dm(tmp_path, "springs")
    path = tmp_path / dm.spec("train").filename()
    payload = torch.load(path, weights_only=True)
    payload["tensors"]["edge_attr"][0, 0, 1] = 1.0 - payload["tensors"]["edge_attr"][0, 0, 1]
    torch.save(payload, path)
    with pytest.warns(CacheWarning, match=re.escape(str(path)) + ".*checksum"):
        again = _dm(tmp_path, "springs")
    assert torch.equal(again.datasets["train"].extra["edge_attr"], dm.datasets["train"].extra["edge_attr"])


def test_spring_prob_changes_the_graphs(tmp_path):
    dense = _dm(tmp_path, "springs", spring_prob=1.0).trajectories("train").edge_attr
    assert torch.equal(dense, (1 - torch.eye(5)).expand(5, 5, 5).double())
    assert _dm(tmp_path, "springs", spring_prob=0.0).trajectories("train").edge_attr.sum() == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"system": "plasma"}, r"^system must be one of charged, springs, gravity, got 'plasma'"),
        ({"softening": 0.2}, r"^softening applies to system gravity only \(system is 'charged'\)"),
        ({"system": "springs", "mass_range": [0.1, 1.0]}, r"^mass_range applies to system gravity only"),
        ({"system": "gravity", "spring_prob": 0.5}, r"^spring_prob applies to system springs only"),
        ({"system": "gravity", "softening": -1.0}, r"^softening must be >= 0"),
        ({"system": "gravity", "mass_range": [1.0, 0.5]}, r"^mass_range must be \[low, high\] with 0 < low <= high"),
        ({"system": "gravity", "mass_range": [0.0, 1.0]}, r"^mass_range must be"),
        ({"system": "springs", "spring_prob": 1.5}, r"^spring_prob must be in \[0, 1\]"),
        ({"interaction_strength": float("nan")}, r"^interaction_strength must be a finite number"),
        ({"split_fractions": [0.5, 0.25, 0.25]}, r"^split_fractions applies to data.source only"),
    ],
)
def test_bad_system_options_raise_at_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NBodyDataModule(**kwargs)
