"""``--data.source``: a user's .npz / .pt trajectories, validated, split and windowed like simulated data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import tiny_args

from set_lightning.entry import main
from set_lightning.data import NBodyDataModule, load_source

WINDOW = {"input_frame": 4, "target_frame": 7, "history": 3, "batch_size": 4}


def _simulated(tmp_path: Path, system: str = "springs") -> NBodyDataModule:
    dm = NBodyDataModule(n_train=2, n_val=2, n_test=6, steps=1000, sample_freq=100, system=system,
                         cache_dir=str(tmp_path / "cache"), **WINDOW)
    dm.prepare_data()
    dm.setup()
    return dm


def _arrays(b: int = 6, t: int = 9, n: int = 4, f: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(b, t, n, 3)), "v": rng.normal(size=(b, t, n, 3)),
            "node_attr": rng.normal(size=(b, n, f))}


def _write(path: Path, arrays: dict) -> Path:
    if path.suffix == ".pt":
        torch.save({k: torch.as_tensor(v) for k, v in arrays.items()}, path)
    else:
        np.savez(path, **arrays)
    return path


def _source_dm(path: Path, **kwargs) -> NBodyDataModule:
    return NBodyDataModule(**{"source": str(path), "n_train": 2, "n_val": 1, "n_test": 3, **WINDOW, **kwargs})


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_round_trip_simulate_save_load_gives_the_same_samples(tmp_path, suffix):
    sim = _simulated(tmp_path)
    traj = sim.trajectories("test")
    arrays = {"x": traj.x.numpy(), "v": traj.v.numpy(), "node_attr": traj.charges.numpy(),
              "edge_attr": traj.edge_attr.numpy()}
    path = _write(tmp_path / f"springs{suffix}", arrays)
    dm = _source_dm(path, n_train=0, n_val=0, n_test=6)
    dm.setup()
    assert dm.n_frames == 9 and dm.n_particles == 5 and dm.counts == {"train": 0, "val": 0, "test": 6}
    order = dm.source_indices["test"]
    assert sorted(order.tolist()) == list(range(6))
    loaded, simulated = dm.datasets["test"], sim.datasets["test"]
    for i in range(6):
        got, want = loaded[i], simulated[int(order[i])]
        assert set(got) == set(want) | {"node_attr"}
        for key in want:
            assert torch.equal(got[key], want[key]), key
        assert torch.equal(got["node_attr"], want["charges"])
    batch = next(iter(dm.test_dataloader()))
    assert batch["x"].shape == (4, 3, 5, 3) and batch["edge_attr"].shape == (4, 5, 5)


def test_node_attr_first_column_feeds_charges_and_edge_features_pass_through(tmp_path):
    arrays = _arrays(f=3)
    arrays["edge_attr"] = np.ones((6, 4, 4, 2))
    dm = _source_dm(_write(tmp_path / "d.npz", arrays))
    dm.setup()
    idx = dm.source_indices["train"]
    item = dm.datasets["train"][1]
    assert torch.equal(item["charges"], torch.as_tensor(arrays["node_attr"][int(idx[1]), :, :1]).float())
    assert item["node_attr"].shape == (4, 3) and item["edge_attr"].shape == (4, 4, 2)
    assert torch.equal(item["x"], torch.as_tensor(arrays["x"][int(idx[1]), 2:5]).float())
    assert torch.equal(item["x_target"], torch.as_tensor(arrays["x"][int(idx[1]), 7]).float())


def test_integer_and_boolean_arrays_are_accepted(tmp_path):
    arrays = _arrays()
    arrays["node_attr"] = np.ones((6, 4, 1), dtype=np.int64)
    arrays["edge_attr"] = np.ones((6, 4, 4), dtype=bool)
    data = load_source(_write(tmp_path / "d.npz", arrays))
    assert data.node_attr.dtype == data.edge_attr.dtype == torch.float64 and data.edge_attr.sum() == 96


def test_split_is_deterministic_disjoint_and_seeded(tmp_path):
    path = _write(tmp_path / "d.npz", _arrays(b=20))
    a = _source_dm(path, n_train=10, n_val=5, n_test=5)
    b = _source_dm(path, n_train=10, n_val=5, n_test=5)
    c = _source_dm(path, n_train=10, n_val=5, n_test=5, seed=1)
    assert all(torch.equal(a.source_indices[s], b.source_indices[s]) for s in ("train", "val", "test"))
    assert not torch.equal(a.source_indices["train"], c.source_indices["train"])
    everything = torch.cat([a.source_indices[s] for s in ("train", "val", "test")])
    assert sorted(everything.tolist()) == list(range(20))
    assert torch.equal(a.trajectories("val").x, torch.as_tensor(_arrays(b=20)["x"])[a.source_indices["val"]])
    part = _source_dm(path, n_train=3, n_val=1, n_test=1)
    assert [len(part.source_indices[s]) for s in ("train", "val", "test")] == [3, 1, 1]


def test_split_fractions(tmp_path):
    dm = _source_dm(_write(tmp_path / "d.npz", _arrays(b=10)), split_fractions=[0.7, 0.15, 0.15])
    assert dm.counts == {"train": 7, "val": 1, "test": 1}  # floor(f * B)
    dm = _source_dm(_write(tmp_path / "e.npz", _arrays(b=20)), split_fractions=[0.6, 0.2, 0.2])
    assert dm.counts == {"train": 12, "val": 4, "test": 4}
    dm.setup()
    assert len(dm.datasets["train"]) == 12 and len(dm.datasets["test"]) == 4


def _bad(tmp_path: Path, change) -> Path:
    arrays = _arrays()
    change(arrays)
    return _write(tmp_path / "bad.npz", arrays)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("v"), r"missing key 'v' \(B, T, N, 3\)"),
        (lambda a: a.pop("node_attr"), r"missing key 'node_attr' \(B, N, F\)"),
        (lambda a: a.update(edges=np.ones((6, 4, 4))), r"unexpected key 'edges'"),
        (lambda a: a.update(x=np.ones((6, 9, 4))), r"key 'x' must have shape \(B, T, N, 3\) .*got \(6, 9, 4\)$"),
        (lambda a: a.update(x=np.ones((6, 9, 4, 2))), r"key 'x' must have shape \(B, T, N, 3\) .*got \(6, 9, 4, 2\)"),
        (lambda a: a.update(x=np.ones((6, 9, 1, 3))), r"key 'x' must have shape \(B, T, N, 3\) with N >= 2"),
        (lambda a: a.update(v=np.ones((6, 8, 4, 3))),
         r"key 'v' must have shape \(B, T, N, 3\) = \(6, 9, 4, 3\) like 'x', got \(6, 8, 4, 3\)"),
        (lambda a: a.update(node_attr=np.ones((6, 5, 1))),
         r"key 'node_attr' must have shape \(B, N, F\) = \(6, 4, F\) with F >= 1, got \(6, 5, 1\)"),
        (lambda a: a.update(node_attr=np.ones((6, 4, 0))), r"key 'node_attr' must have shape \(B, N, F\)"),
        (lambda a: a.update(node_attr=np.ones((6, 4))), r"key 'node_attr' must have shape \(B, N, F\)"),
        (lambda a: a.update(edge_attr=np.ones((6, 4, 3))),
         r"key 'edge_attr' must have shape \(B, N, N\) = \(6, 4, 4\) or \(B, N, N, E\)"),
        (lambda a: a.update(edge_attr=np.ones((6, 4, 4, 2, 1))), r"key 'edge_attr' must have shape"),
        (lambda a: a.update(node_attr=np.full((6, 4, 1), "q")),
         r"key 'node_attr' must hold real numbers .*got dtype <U1"),
        (lambda a: a["x"].__setitem__((3, 1, 0, 0), np.nan),
         r"key 'x' holds NaN or infinite values \(first in trajectory 3\)"),
        (lambda a: a["v"].__setitem__((5, 0, 0, 0), np.inf),
         r"key 'v' holds NaN or infinite values \(first in trajectory 5\)"),
    ],
)
def test_file_validation_errors_name_the_key_and_shape(tmp_path, change, message):
    with pytest.raises(ValueError, match=r"^data\.source: " + message) as info:
        _source_dm(_bad(tmp_path, change))
    assert "\n" not in str(info.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^data\.source: no such file: .*nope\.npz"):
        _source_dm(tmp_path / "nope.npz")
    (tmp_path / "d.csv").write_text("1")
    with pytest.raises(ValueError, match=r"^data\.source: .*d\.csv must be a \.npz or \.pt file"):
        _source_dm(tmp_path / "d.csv")
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"^data\.source: cannot read .*broken\.npz"):
        _source_dm(tmp_path / "broken.npz")
    torch.save([torch.ones(3)], tmp_path / "list.pt")
    not_a_dict = r"^data\.source: a \.pt file must hold a dict of tensors with keys x \(B, T, N, 3\)"
    with pytest.raises(ValueError, match=not_a_dict):
        _source_dm(tmp_path / "list.pt")
    torch.save({"x": "positions", "v": torch.zeros(1), "node_attr": torch.zeros(1)}, tmp_path / "str.pt")
    with pytest.raises(ValueError, match=r"^data\.source: key 'x' must be an array of shape \(B, T, N, 3\), got a str"):
        _source_dm(tmp_path / "str.pt")


def test_counts_and_frames_are_checked_against_the_file(tmp_path):
    path = _write(tmp_path / "d.npz", _arrays(b=6, t=9))
    too_many = r"^data\.source: n_train \+ n_val \+ n_test = 3000 \+ 2000 \+ 2000 = 7000 exceeds the 6"
    with pytest.raises(ValueError, match=too_many):
        NBodyDataModule(source=str(path), **WINDOW)
    beyond = r"^target_frame must be <= 8 \(the last of the 9 frames in data.source\), got 9"
    with pytest.raises(ValueError, match=beyond):
        _source_dm(path, target_frame=9)
    with pytest.raises(ValueError, match=r"^history must be in 1\.\.5"):
        _source_dm(path, history=6)
    with pytest.raises(ValueError, match=r"^system does not apply with data.source"):
        _source_dm(path, system="gravity")
    with pytest.raises(ValueError, match=r"^softening applies to simulated data only, not to data.source"):
        _source_dm(path, softening=0.1)
    with pytest.raises(ValueError, match=r"^split_fractions must be three fractions"):
        _source_dm(path, split_fractions=[0.8, 0.2, 0.2])


def test_cli_reports_a_bad_file_in_one_line(tmp_path, data_cache, monkeypatch, capsys):
    """``python -m set_lightning fit ... --data.source BAD`` (in process): one error line, exit 1, nothing written."""
    bad = _bad(tmp_path, lambda a: a.update(x=np.ones((6, 9, 4))))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["set_lightning"])  # the arguments go to main, not pytest's argv
    monkeypatch.delenv("SET_LIGHTNING_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as done:
        main(["fit", *tiny_args(data_cache), f"--data.source={bad}", "--data.input_frame=4", "--data.target_frame=7"])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == ["error: data.source: key 'x' must have shape (B, T, N, 3) with B, T, N >= 1, got (6, 9, 4)"]
    assert not (tmp_path / "runs").exists()  # nothing written
