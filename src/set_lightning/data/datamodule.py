"""LightningDataModule of the charged N-body benchmark (EGNN's task by default)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from set_lightning.data.cache import Trajectories, TrajectorySpec, load_or_generate
from set_lightning.data.datasets import NBodyDataset
from set_lightning.data.simulator import n_saved_frames

__all__ = ["NBodyDataModule", "validate_nbody_params"]

SPLITS = ("train", "val", "test")
_STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
}


def validate_nbody_params(
    *,
    n_particles: int,
    n_train: int,
    n_val: int,
    n_test: int,
    history: int,
    input_frame: int,
    target_frame: int,
    batch_size: int,
    num_workers: int,
    steps: int,
    sample_freq: int,
    dt: float,
) -> None:
    """Raise a ValueError naming the first invalid field and its allowed values."""
    if n_particles < 2:
        raise ValueError(f"n_particles must be >= 2, got {n_particles}")
    for name, count in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if count < 0:
            raise ValueError(f"{name} must be >= 0, got {count}")
    if sample_freq < 1:
        raise ValueError(f"sample_freq must be >= 1, got {sample_freq}")
    if steps < 2 * sample_freq or steps % sample_freq != 0:
        raise ValueError(
            f"steps must be a multiple of sample_freq ({sample_freq}) and at least 2 * sample_freq "
            f"(one saved frame), got {steps}"
        )
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    n_saved = steps // sample_freq - 1
    if history < 1:
        raise ValueError(f"history must be >= 1, got {history}")
    if input_frame < 0:
        raise ValueError(f"input_frame must be >= 0 (a 0-indexed saved frame), got {input_frame}")
    if input_frame - history + 1 < 0:
        raise ValueError(
            f"history must be in 1..{input_frame + 1} (frames 0..input_frame={input_frame} are available), "
            f"got {history}"
        )
    if target_frame <= input_frame:
        raise ValueError(f"target_frame must be > input_frame ({input_frame}), got {target_frame}")
    if target_frame > n_saved - 1:
        raise ValueError(
            f"target_frame must be <= {n_saved - 1} (the last of the {n_saved} saved frames with "
            f"steps={steps}, sample_freq={sample_freq}), got {target_frame}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")


class NBodyDataModule(pl.LightningDataModule):
    """Charged N-body trajectories (NRI / EGNN simulator), simulated once and cached on disk.

    Each sample is a dict of float32 tensors: ``"x"``, ``"v"``: ``(L, N, 3)`` positions and
    velocities of frames ``input_frame - L + 1 .. input_frame``; ``"charges"``: ``(N, 1)``;
    ``"x_target"``, ``"v_target"``: ``(N, 3)`` at ``target_frame``. Batches add a leading ``B``.
    Frames are 0-indexed into the ``steps // sample_freq - 1`` saved frames (0..48 by default);
    frame ``k`` is the state at integration step ``(k + 1) * sample_freq``. The defaults are the
    EGNN benchmark: 3000 / 2000 / 2000 trajectories of 5 particles, frame 30 -> frame 40.

    Args:
        n_particles: number of particles N per system (>= 2).
        n_train: number of training trajectories (>= 0).
        n_val: number of validation trajectories (>= 0).
        n_test: number of test trajectories (>= 0); the predict split is the test split.
        history: number L of input frames, ending at ``input_frame`` (1 .. input_frame + 1).
        input_frame: index of the last input frame (0-indexed saved frame).
        target_frame: index of the frame to predict (input_frame < target_frame <= last frame).
        seed: data set seed; train / val / test each derive their own seed from it.
        cache_dir: folder of the cached trajectory files (created if missing).
        batch_size: samples per batch (>= 1).
        num_workers: DataLoader worker processes (0 = load in the main process).
        steps: integration steps per trajectory (a multiple of sample_freq).
        sample_freq: integration steps between saved frames (>= 1).
        dt: integration time step (> 0); forces are clipped per component to 0.1 / dt.
    """

    def __init__(
        self,
        n_particles: int = 5,
        n_train: int = 3000,
        n_val: int = 2000,
        n_test: int = 2000,
        history: int = 1,
        input_frame: int = 30,
        target_frame: int = 40,
        seed: int = 0,
        cache_dir: str = "data_cache",
        batch_size: int = 100,
        num_workers: int = 0,
        steps: int = 5000,
        sample_freq: int = 100,
        dt: float = 0.001,
    ) -> None:
        super().__init__()
        validate_nbody_params(
            n_particles=n_particles, n_train=n_train, n_val=n_val, n_test=n_test, history=history,
            input_frame=input_frame, target_frame=target_frame, batch_size=batch_size,
            num_workers=num_workers, steps=steps, sample_freq=sample_freq, dt=dt,
        )
        self.save_hyperparameters()
        self.n_particles = n_particles
        self.counts = {"train": n_train, "val": n_val, "test": n_test}
        self.history = history
        self.input_frame = input_frame
        self.target_frame = target_frame
        self.seed = seed
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.steps = steps
        self.sample_freq = sample_freq
        self.dt = dt
        self.datasets: dict[str, NBodyDataset] = {}

    @property
    def n_saved_frames(self) -> int:
        """Number of saved frames per trajectory (49 with the defaults)."""
        return n_saved_frames(self.steps, self.sample_freq)

    def spec(self, split: str) -> TrajectorySpec:
        """The cache key / generation parameters of one split."""
        return TrajectorySpec(
            split=split, count=self.counts[split], n_particles=self.n_particles, steps=self.steps,
            sample_freq=self.sample_freq, dt=self.dt, seed=self.seed,
        )

    def trajectories(self, split: str) -> Trajectories:
        """Full float64 trajectories of ``split`` (from the cache, generated on a miss)."""
        return load_or_generate(self.spec(split), self.cache_dir)

    def prepare_data(self) -> None:
        """Simulate and cache every split that is not cached yet (rank 0 only under DDP)."""
        for split in SPLITS:
            self.trajectories(split)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs (all when None) into memory."""
        splits = SPLITS if stage is None else _STAGE_SPLITS.get(stage, SPLITS)
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = NBodyDataset(
                    self.trajectories(split), self.history, self.input_frame, self.target_frame
                )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup(next(stage for stage, splits in _STAGE_SPLITS.items() if split in splits))
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches, in order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split, in order."""
        return self._loader("test", shuffle=False)
