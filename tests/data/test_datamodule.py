"""NBodyDataModule: batches, seeding, splits, on-disk cache and parameter validation."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

import set_lightning.data.cache as cache_mod
import set_lightning.data.specs as specs_mod
from set_lightning.data import CacheWarning, NBodyDataModule, TrajectorySpec, load_or_generate

# Small and fast: 9 saved frames (0..8), input frame 4, target frame 7.
SMALL = {
    "n_train": 6, "n_val": 4, "n_test": 5, "steps": 1000, "sample_freq": 100, "input_frame": 4, "target_frame": 7,
}


def _dm(tmp_path: Path, **kwargs) -> NBodyDataModule:
    params = {**SMALL, "cache_dir": str(tmp_path), "batch_size": 4, **kwargs}
    return NBodyDataModule(**params)


def _ready(dm: NBodyDataModule) -> NBodyDataModule:
    dm.prepare_data()
    dm.setup()
    return dm


def _cache_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".pt")


@pytest.fixture
def count_sims(monkeypatch):
    """Count calls of the simulator made by the specs (what the cache layer generates with)."""
    calls = []
    real = specs_mod.simulate_charged

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(specs_mod, "simulate_charged", counting)
    return calls


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One cache folder for tests that only change slicing / loader parameters."""
    return tmp_path_factory.mktemp("shared_cache")


@pytest.mark.parametrize("history", [1, 5])
def test_batch_shapes_default_frames(shared_cache, history):
    """Defaults: frame 30 -> frame 40 of 49 frames (5000 steps), L = 1 and L = 5."""
    dm = NBodyDataModule(n_train=6, n_val=3, n_test=3, history=history, batch_size=4, cache_dir=str(shared_cache))
    _ready(dm)
    assert dm.n_frames == 49
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "v", "charges", "x_target", "v_target", "min_dist"}
    assert batch["x"].shape == batch["v"].shape == (4, history, 5, 3)
    assert batch["min_dist"].shape == (4,)
    assert batch["charges"].shape == (4, 5, 1)
    assert batch["x_target"].shape == batch["v_target"].shape == (4, 5, 3)
    assert all(t.dtype == torch.float32 for t in batch.values())
    sizes = [len(b["x"]) for b in dm.val_dataloader()]
    assert sizes == [3]


def test_sample_content_matches_frames(tmp_path):
    dm = _ready(_dm(tmp_path, history=3))
    traj = dm.trajectories("val")
    ds = dm.datasets["val"]
    assert len(ds) == 4
    item = ds[2]
    assert torch.equal(item["x"], traj.x[2, 2:5].float())  # frames input_frame - L + 1 .. input_frame
    assert torch.equal(item["v"], traj.v[2, 2:5].float())
    assert torch.equal(item["x_target"], traj.x[2, 7].float())
    assert torch.equal(item["v_target"], traj.v[2, 7].float())
    assert torch.equal(item["charges"], traj.charges[2].float())
    assert set(item["charges"].unique().tolist()) <= {-1.0, 1.0}


def test_loaders_cover_splits_and_predict_is_test(tmp_path):
    dm = _ready(_dm(tmp_path))
    assert sum(len(b["x"]) for b in dm.train_dataloader()) == 6
    assert sum(len(b["x"]) for b in dm.val_dataloader()) == 4
    test = torch.cat([b["x"] for b in dm.test_dataloader()])
    pred = torch.cat([b["x"] for b in dm.predict_dataloader()])
    assert len(test) == 5 and torch.equal(test, pred)


def test_predict_batches_carry_the_true_path(tmp_path):
    dm = _ready(_dm(tmp_path, history=2))
    batch = next(iter(dm.predict_dataloader()))
    # frames input_frame (4) .. target_frame (7): the simulation between the history and the target
    assert batch["x_path"].shape == (4, 4, 5, 3)
    assert torch.equal(batch["x_path"][:, 0], batch["x"][:, -1])
    assert torch.equal(batch["x_path"][:, -1], batch["x_target"])
    assert torch.equal(batch["x_path"][:, 2], dm.trajectories("test").x[:4, 6].float())
    assert "x_path" not in next(iter(dm.test_dataloader()))


def test_each_stage_simulates_only_the_splits_it_reads(tmp_path):
    import lightning.pytorch as pl

    from set_lightning.lit import NBodyLightningModule
    from set_lightning.models import build_model

    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.test(NBodyLightningModule(build_model("linear")), datamodule=_dm(tmp_path / "test"), verbose=False)
    assert [p.name.split("_")[1] for p in _cache_files(tmp_path / "test")] == ["test"]
    trainer.validate(NBodyLightningModule(build_model("linear")), datamodule=_dm(tmp_path / "val"), verbose=False)
    assert [p.name.split("_")[1] for p in _cache_files(tmp_path / "val")] == ["val"]


@pytest.mark.parametrize("stage, field", [("fit", "n_train"), ("validate", "n_val"), ("test", "n_test")])
def test_a_stage_needs_trajectories_in_its_splits(tmp_path, stage, field):
    dm = _dm(tmp_path, **{field: 0})
    with pytest.raises(ValueError, match=f"{field} must be >= 1 to {stage}"):
        dm.splits_for(stage)
    assert dm.splits_for(None) == ("train", "val", "test")  # without a trainer: every split


def test_unwritable_cache_fails_before_simulating(tmp_path, count_sims):
    from cli_helpers import readonly_dir

    folder = readonly_dir(tmp_path)
    with pytest.raises(ValueError, match=r"cache_dir: the train split .* must be simulated and cached in"):
        load_or_generate(TrajectorySpec(split="train", count=3, n_particles=5, steps=1000), folder / "cache")
    assert count_sims == []
    assert not (folder / "cache").exists()


def test_loaders_work_without_explicit_setup(tmp_path):
    dm = _dm(tmp_path)
    assert len(next(iter(dm.val_dataloader()))["x"]) == 4


def test_num_workers_two(tmp_path):
    ref = [b["x"] for b in _ready(_dm(tmp_path)).val_dataloader()]
    dm = _ready(_dm(tmp_path, num_workers=2))
    loader = dm.val_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    got = [b["x"] for b in loader]
    assert len(got) == len(ref) and all(torch.equal(a, b) for a, b in zip(got, ref))
    assert sum(len(b["x"]) for b in dm.train_dataloader()) == 6


def test_same_seed_same_data_different_seed_different(tmp_path):
    a = _ready(_dm(tmp_path / "a", seed=3))
    b = _ready(_dm(tmp_path / "b", seed=3))
    c = _ready(_dm(tmp_path / "c", seed=4))
    for split in ("train", "val", "test"):
        assert torch.equal(a.datasets[split].x, b.datasets[split].x)
        assert torch.equal(a.datasets[split].x_target, b.datasets[split].x_target)
        assert not torch.equal(a.datasets[split].x, c.datasets[split].x)


def test_splits_are_different_trajectories(tmp_path):
    dm = _ready(_dm(tmp_path, n_train=5, n_val=5, n_test=5))
    firsts = {s: dm.trajectories(s).x[:, 0].reshape(5, -1) for s in ("train", "val", "test")}
    for s, t in (("train", "val"), ("train", "test"), ("val", "test")):
        same = (firsts[s][:, None] == firsts[t][None]).all(-1)
        assert not same.any(), (s, t)


def test_cache_hit_does_not_resimulate(tmp_path, monkeypatch):
    first = _ready(_dm(tmp_path))
    assert len(_cache_files(tmp_path)) == 3

    def boom(*args, **kwargs):
        raise AssertionError("simulated again despite a valid cache file")

    monkeypatch.setattr(specs_mod, "simulate_charged", boom)
    second = _ready(_dm(tmp_path, history=2, batch_size=2))  # slicing / loader params: same files
    assert torch.equal(first.datasets["test"].x_target, second.datasets["test"].x_target)


@pytest.mark.parametrize(
    ("change", "split_changed"),
    [({"seed": 1}, None), ({"n_train": 7}, "train"), ({"steps": 1100}, None), ({"dt": 0.002}, None),
     ({"n_particles": 6}, None), ({"sample_freq": 50}, None)],
)
def test_cache_miss_on_changed_parameter(tmp_path, count_sims, change, split_changed):
    _ready(_dm(tmp_path))
    assert len(count_sims) == 3
    _ready(_dm(tmp_path, **change))
    new_sims = 1 if split_changed else 3
    assert len(count_sims) == 3 + new_sims
    assert len(_cache_files(tmp_path)) == 3 + new_sims


def _train_file(tmp_path: Path, dm: NBodyDataModule) -> Path:
    path = tmp_path / dm.spec("train").filename()
    assert path.exists()
    return path


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_is_reported_and_regenerated(tmp_path, count_sims, damage):
    dm = _ready(_dm(tmp_path))
    path = _train_file(tmp_path, dm)
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 50)
    else:
        path.write_bytes(b"")
    dm2 = _dm(tmp_path)
    with pytest.warns(CacheWarning, match=re.escape(str(path))):
        dm2.prepare_data()
    assert len(count_sims) == 4  # only the damaged split was simulated again
    dm2.setup()
    assert torch.equal(dm2.datasets["train"].x, dm.datasets["train"].x)
    assert cache_mod.load_trajectories(path, dm.spec("train")) is not None  # the file is valid again


def test_mismatching_metadata_is_reported_and_regenerated(tmp_path, count_sims):
    dm = _ready(_dm(tmp_path))
    path = _train_file(tmp_path, dm)
    payload = torch.load(path, weights_only=True)
    payload["meta"]["seed"] = 12345
    torch.save(payload, path)
    with pytest.warns(CacheWarning, match=re.escape(str(path)) + ".*metadata mismatch.*seed"):
        _dm(tmp_path).prepare_data()
    assert len(count_sims) == 4


def test_checksum_mismatch_is_reported_and_regenerated(tmp_path, count_sims):
    dm = _ready(_dm(tmp_path))
    path = _train_file(tmp_path, dm)
    payload = torch.load(path, weights_only=True)
    payload["tensors"]["x"][0, 0, 0, 0] += 1.0
    torch.save(payload, path)
    with pytest.warns(CacheWarning, match=re.escape(str(path)) + ".*checksum"):
        dm2 = _ready(_dm(tmp_path))
    assert len(count_sims) == 4
    assert torch.equal(dm2.datasets["train"].x, dm.datasets["train"].x)


def test_wrong_shape_is_reported(tmp_path):
    spec = TrajectorySpec(split="val", count=3, n_particles=4, steps=300, sample_freq=100)
    data = load_or_generate(spec, tmp_path)
    other = TrajectorySpec(split="val", count=2, n_particles=4, steps=300, sample_freq=100)
    path = tmp_path / spec.filename()
    # a file holding 3 trajectories under the name / metadata of a 2-trajectory spec
    cache_mod.save_trajectories(path, spec, data)
    path.rename(tmp_path / other.filename())
    with pytest.warns(CacheWarning, match="metadata mismatch"):
        assert load_or_generate(other, tmp_path).x.shape[0] == 2


def test_writes_are_atomic(tmp_path, monkeypatch):
    spec = TrajectorySpec(split="train", count=2, n_particles=3, steps=300, sample_freq=100)

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        load_or_generate(spec, tmp_path)
    # neither a half-written cache file nor a temporary (only the generation lock's empty file)
    assert [p.name for p in tmp_path.iterdir()] == [f".{spec.filename()}.lock"]
    monkeypatch.undo()
    load_or_generate(spec, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{spec.filename()}.lock", spec.filename()]


def test_spec_key_covers_every_parameter():
    base = TrajectorySpec(split="train", count=10, n_particles=5)
    variants = [
        TrajectorySpec(split="val", count=10, n_particles=5),
        TrajectorySpec(split="train", count=11, n_particles=5),
        TrajectorySpec(split="train", count=10, n_particles=6),
        TrajectorySpec(split="train", count=10, n_particles=5, steps=6000),
        TrajectorySpec(split="train", count=10, n_particles=5, sample_freq=50),
        TrajectorySpec(split="train", count=10, n_particles=5, dt=0.0005),
        TrajectorySpec(split="train", count=10, n_particles=5, seed=1),
        TrajectorySpec(split="train", count=10, n_particles=5, interaction_strength=2.0),
        TrajectorySpec(split="train", count=10, n_particles=5, vel_norm=1.0),
        TrajectorySpec(split="train", count=10, n_particles=5, loc_std=2.0),
    ]
    names = {base.filename()} | {v.filename() for v in variants}
    assert len(names) == len(variants) + 1
    # loc_std=None resolves to (5 / 5) ** (1 / 3) = 1.0
    assert TrajectorySpec(split="train", count=10, n_particles=5, loc_std=1.0).key() == base.key()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"history": 0}, "history"),
        ({"history": 32}, "history"),  # input_frame 30: only 31 frames available
        ({"input_frame": -1}, "input_frame"),
        ({"target_frame": 30}, "target_frame"),
        ({"target_frame": 25}, "target_frame"),
        ({"target_frame": 49}, "target_frame"),  # last saved frame is 48
        ({"steps": 2000, "target_frame": 20}, "target_frame"),
        ({"n_particles": 1}, "n_particles"),
        ({"n_train": -1}, "n_train"),
        ({"n_val": -5}, "n_val"),
        ({"n_test": -1}, "n_test"),
        ({"steps": 5050}, "steps"),
        ({"sample_freq": 0}, "sample_freq"),
        ({"dt": 0.0}, "dt"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bad_parameters_raise_at_init(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field} must"):
        NBodyDataModule(**kwargs)


def test_history_can_use_every_frame_up_to_input(tmp_path):
    dm = _ready(_dm(tmp_path, history=5))  # frames 0..4
    assert dm.datasets["train"].x.shape == (6, 5, 5, 3)


def test_hyperparameters_and_docstring():
    params = [p for p in inspect.signature(NBodyDataModule.__init__).parameters if p != "self"]
    assert params == [
        "n_particles", "n_train", "n_val", "n_test", "history", "input_frame", "target_frame", "seed",
        "cache_dir", "batch_size", "num_workers", "steps", "sample_freq", "dt",
        # appended for the other systems and file sources (the charged ones above keep their order)
        "system", "interaction_strength", "softening", "mass_range", "spring_prob", "source", "split_fractions",
    ]
    dm = NBodyDataModule()
    defaults = {p: inspect.signature(NBodyDataModule.__init__).parameters[p].default for p in params}
    assert dict(dm.hparams) == defaults
    doc = NBodyDataModule.__doc__
    assert all(re.search(rf"^\s+{p}: \S", doc, flags=re.M) for p in params)
