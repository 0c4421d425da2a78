"""LightningDataModule of the N-body benchmarks (charged, springs, gravity) or of a user's trajectory file.

The default is the charged N-body benchmark (EGNN's task).
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from set_lightning.data.cache import SPECS, SYSTEMS, Spec, Trajectories, load_or_generate
from set_lightning.data.datasets import NBodyDataset, collate
from set_lightning.data.source import load_source, split_source
from set_lightning.errors import UserError

__all__ = ["NBodyDataModule", "validate_nbody_params", "validate_system_options"]

SPLITS = ("train", "val", "test")
#: the simulated splits each stage reads (predict reads the test split)
STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
}
COUNT_FIELDS = {"train": "n_train", "val": "n_val", "test": "n_test"}


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
    system: str = "charged",
    source_frames: int | None = None,
) -> None:
    """Raise a :class:`~set_lightning.errors.UserError` naming the first invalid field and its allowed values.

    ``system`` sets how many frames a simulation saves (gravity saves its initial state too);
    ``source_frames`` is the number of frames of a trajectory file, when the data come from one.
    """
    if system not in SYSTEMS:
        raise UserError(f"system must be one of {', '.join(SYSTEMS)}, got {system!r}")
    if n_particles < 2:
        raise UserError(f"n_particles must be >= 2, got {n_particles}")
    for name, count in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if count < 0:
            raise UserError(f"{name} must be >= 0, got {count}")
    if sample_freq < 1:
        raise UserError(f"sample_freq must be >= 1, got {sample_freq}")
    if steps < 2 * sample_freq or steps % sample_freq != 0:
        raise UserError(
            f"steps must be a multiple of sample_freq ({sample_freq}) and at least 2 * sample_freq "
            f"(one saved frame), got {steps}"
        )
    if not dt > 0:
        raise UserError(f"dt must be > 0, got {dt}")
    n_frames = _n_frames(system, steps, sample_freq, source_frames)
    if history < 1:
        raise UserError(f"history must be >= 1, got {history}")
    if input_frame < 0:
        raise UserError(f"input_frame must be >= 0 (a 0-indexed saved frame), got {input_frame}")
    if input_frame - history + 1 < 0:
        raise UserError(
            f"history must be in 1..{input_frame + 1} (frames 0..input_frame={input_frame} are available), "
            f"got {history}"
        )
    if target_frame <= input_frame:
        raise UserError(f"target_frame must be > input_frame ({input_frame}), got {target_frame}")
    if target_frame > n_frames - 1:
        where = ("in data.source" if source_frames is not None
                 else f"saved with system={system}, steps={steps}, sample_freq={sample_freq}")
        raise UserError(
            f"target_frame must be <= {n_frames - 1} (the last of the {n_frames} frames {where}), got {target_frame}"
        )
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise UserError(f"num_workers must be >= 0, got {num_workers}")


def _n_frames(system: str, steps: int, sample_freq: int, source_frames: int | None = None) -> int:
    """Frames per trajectory: a file's count, else what the system's simulator saves."""
    if source_frames is not None:
        return source_frames
    return steps // sample_freq - (0 if system == "gravity" else 1)


#: System-specific options and the systems that use them.
_SYSTEM_OPTIONS = {
    "interaction_strength": ("charged", "springs", "gravity"),
    "softening": ("gravity",),
    "mass_range": ("gravity",),
    "spring_prob": ("springs",),
}


def validate_system_options(
    *,
    system: str,
    source: str | None,
    interaction_strength: float | None,
    softening: float | None,
    mass_range: tuple[float, float] | None,
    spring_prob: float | None,
    split_fractions: tuple[float, float, float] | None,
) -> None:
    """Raise a ValueError naming the first system option that is invalid or does not apply."""
    given = {"interaction_strength": interaction_strength, "softening": softening, "mass_range": mass_range,
             "spring_prob": spring_prob}
    if source is not None:
        if system != "charged":
            raise UserError(
                f"system does not apply with data.source (the file holds the trajectories): leave it unset, "
                f"got {system!r}"
            )
        for name, value in given.items():
            if value is not None:
                raise UserError(f"{name} applies to simulated data only, not to data.source: leave it unset")
    else:
        for name, value in given.items():
            if value is not None and system not in _SYSTEM_OPTIONS[name]:
                users = " or ".join(_SYSTEM_OPTIONS[name])
                raise UserError(f"{name} applies to system {users} only (system is {system!r}): leave it unset")
        if split_fractions is not None:
            raise UserError(
                "split_fractions applies to data.source only; simulated splits use n_train / n_val / n_test"
            )
    if interaction_strength is not None and not math.isfinite(interaction_strength):
        raise UserError(f"interaction_strength must be a finite number, got {interaction_strength}")
    if softening is not None and not softening >= 0:
        raise UserError(f"softening must be >= 0, got {softening}")
    if mass_range is not None and (len(mass_range) != 2 or not 0 < mass_range[0] <= mass_range[1]):
        raise UserError(f"mass_range must be [low, high] with 0 < low <= high, got {list(mass_range)}")
    if spring_prob is not None and not 0 <= spring_prob <= 1:
        raise UserError(f"spring_prob must be in [0, 1], got {spring_prob}")
    if split_fractions is not None and (
        len(split_fractions) != 3 or min(split_fractions) < 0 or sum(split_fractions) > 1 + 1e-9
    ):
        raise UserError(
            f"split_fractions must be three fractions [train, val, test], each >= 0, summing to <= 1, "
            f"got {list(split_fractions)}"
        )


class NBodyDataModule(pl.LightningDataModule):
    """N-body trajectories: simulated once and cached on disk, or loaded from a user's file.

    ``system`` picks the simulator (each batched float64 torch, cached keyed by the system and all
    its parameters):

    * ``charged`` (default): NRI / EGNN's charged particles; ``charges`` are +/-1. The defaults are
      the EGNN benchmark: 3000 / 2000 / 2000 trajectories of 5 particles, frame 30 -> frame 40.
    * ``springs``: NRI's springs in 3-D (a spring between each pair with probability
      ``spring_prob``); ``charges`` are ones (unit masses) and samples add the spring graph
      ``"edge_attr"`` ``(N, N)``.
    * ``gravity``: SEGNN's softened gravity (kick-drift-kick leapfrog); ``charges`` hold the masses.

    With ``source`` the trajectories come from a ``.npz`` / ``.pt`` file instead (layout in
    :mod:`set_lightning.data.source`): ``charges`` is the first column of its ``node_attr``, and
    samples add ``"node_attr"`` ``(N, F)`` and, when the file has it, ``"edge_attr"``.

    Each sample is a dict of float32 tensors: ``"x"``, ``"v"``: ``(L, N, 3)`` positions and
    velocities of frames ``input_frame - L + 1 .. input_frame``; ``"charges"``: ``(N, 1)``;
    ``"x_target"``, ``"v_target"``: ``(N, 3)`` at ``target_frame``; ``"min_dist"``: ``()``.
    Batches add a leading ``B``. Frames are 0-indexed. The charged and springs simulators save
    ``steps // sample_freq - 1`` frames (0..48 by default), frame ``k`` being the state at step
    ``(k + 1) * sample_freq``; gravity saves ``steps // sample_freq`` frames (0..49), frame ``k``
    being the state at step ``k * sample_freq`` (frame 0 is the initial state, as SEGNN).

    Args:
        n_particles: number of particles N per system (>= 2); a source file sets its own N.
        n_train: number of training trajectories (>= 0).
        n_val: number of validation trajectories (>= 0).
        n_test: number of test trajectories (>= 0); the predict split is the test split.
        history: number L of input frames, ending at ``input_frame`` (1 .. input_frame + 1).
        input_frame: index of the last input frame (0-indexed saved frame).
        target_frame: index of the frame to predict (input_frame < target_frame <= last frame).
        seed: data set seed; train / val / test each derive their own seed from it (a source
            file's trajectories are split by a permutation drawn from it).
        cache_dir: folder of the cached trajectory files (created if missing).
        batch_size: samples per batch (>= 1).
        num_workers: DataLoader worker processes (0 = load in the main process).
        steps: integration steps per trajectory (a multiple of sample_freq).
        sample_freq: integration steps between saved frames (>= 1).
        dt: integration time step (> 0); charged and springs forces are clipped per component to 0.1 / dt.
        system: the simulated system: ``charged``, ``springs`` or ``gravity``.
        interaction_strength: Coulomb constant (charged, default 1), spring constant (springs,
            default 0.1) or gravitational constant G (gravity, default 1); None: the default.
        softening: gravity's softening length (>= 0; None: 0.1).
        mass_range: gravity's masses ``~ U(low, high)`` as ``[low, high]`` (None: ``[1, 1]``, unit masses).
        spring_prob: probability of a spring between two particles (springs; None: 0.5).
        source: a ``.npz`` / ``.pt`` trajectory file to train on instead of simulating (None: simulate).
        split_fractions: ``[train, val, test]`` fractions of a source file's trajectories
            (None: the n_train / n_val / n_test counts).
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
        system: str = "charged",
        interaction_strength: float | None = None,
        softening: float | None = None,
        mass_range: tuple[float, float] | None = None,
        spring_prob: float | None = None,
        source: str | None = None,
        split_fractions: tuple[float, float, float] | None = None,
    ) -> None:
        super().__init__()
        validate_system_options(
            system=system, source=source, interaction_strength=interaction_strength, softening=softening,
            mass_range=mass_range, spring_prob=spring_prob, split_fractions=split_fractions,
        )
        counts = {"train": n_train, "val": n_val, "test": n_test}
        source_data = load_source(source) if source is not None else None
        validate_nbody_params(
            n_particles=n_particles, n_train=n_train, n_val=n_val, n_test=n_test, history=history,
            input_frame=input_frame, target_frame=target_frame, batch_size=batch_size,
            num_workers=num_workers, steps=steps, sample_freq=sample_freq, dt=dt, system=system,
            source_frames=None if source_data is None else source_data.x.shape[1],
        )
        # kept in checkpoints (test/predict of a checkpoint reuse them); the module logs them itself
        self.save_hyperparameters(logger=False)
        self.n_particles = n_particles if source_data is None else source_data.x.shape[2]
        self.counts = counts
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
        self.system = system
        self.system_options = {
            name: (tuple(value) if isinstance(value, list) else value)
            for name, value in (("interaction_strength", interaction_strength), ("softening", softening),
                                ("mass_range", mass_range), ("spring_prob", spring_prob))
            if value is not None
        }
        self.source = source
        #: a source file's splits and, for each, the indices of its trajectories in the file
        self.source_splits: dict[str, Trajectories] = {}
        self.source_indices: dict[str, torch.Tensor] = {}
        if source_data is not None:
            fractions = None if split_fractions is None else tuple(split_fractions)
            self.source_splits, self.source_indices = split_source(source_data, counts, seed, fractions)
            self.counts = {split: len(idx) for split, idx in self.source_indices.items()}
        self.datasets: dict[str, NBodyDataset] = {}

    def attribute_dims(self) -> tuple[int, int]:
        """``(node_dim, edge_dim)`` of the samples: their node attribute columns (a file's ``node_attr``,
        else the one charge / mass column) and pair attribute channels (``edge_attr``; 0 without it)."""
        if self.source is not None:
            t = next(iter(self.source_splits.values()))
            node = t.node_attr.shape[-1] if t.node_attr is not None else 1
            edge = 0 if t.edge_attr is None else (1 if t.edge_attr.dim() == 3 else t.edge_attr.shape[-1])
            return node, edge
        shape = self.spec("train").tensor_shapes().get("edge_attr")
        return 1, 0 if shape is None else (1 if len(shape) == 3 else shape[-1])

    @property
    def n_frames(self) -> int:
        """Number of frames per trajectory (49 with the charged defaults, 50 for gravity, T of a file)."""
        if self.source is not None:
            return next(iter(self.source_splits.values())).x.shape[1]
        return _n_frames(self.system, self.steps, self.sample_freq)

    def spec(self, split: str) -> Spec:
        """The cache key / generation parameters of one simulated split."""
        if self.source is not None:
            raise UserError(f"data.source: the {split} split comes from {self.source}, not from a simulation")
        return SPECS[self.system](
            split=split, count=self.counts[split], n_particles=self.n_particles, steps=self.steps,
            sample_freq=self.sample_freq, dt=self.dt, seed=self.seed, **self.system_options,
        )

    def trajectories(self, split: str) -> Trajectories:
        """Full float64 trajectories of ``split`` (a source file's split, or the cache, generated on a miss)."""
        if self.source is not None:
            return self.source_splits[split]
        return load_or_generate(self.spec(split), self.cache_dir)

    def splits_for(self, stage: str | None) -> tuple[str, ...]:
        """The splits ``stage`` reads (all three when ``None``).

        Raises:
            UserError: one of them has no trajectories (names ``n_train``, ``n_val`` or ``n_test``).
        """
        if stage is None:
            return SPLITS
        stage = str(getattr(stage, "value", stage))  # Lightning passes its TrainerFn enum
        splits = STAGE_SPLITS.get(stage, SPLITS)
        for split in splits:
            if self.counts[split] < 1:
                fractions = self.hparams.get("split_fractions")
                if self.source is not None and fractions is not None:
                    raise UserError(
                        f"split_fractions {list(fractions)} leave the {split} split of {self.source} empty "
                        f"({len(self.source_indices[split])} trajectories), and {stage} reads it: give it a "
                        "fraction that holds at least one trajectory"
                    )
                field = COUNT_FIELDS[split]
                raise UserError(f"{field} must be >= 1 to {stage} (it reads the {split} split), got {self.counts[split]}")
        return splits

    def prepare_data(self) -> None:
        """Simulate and cache the splits the trainer's stage reads (all when used without a trainer).

        Runs on rank 0 only under DDP, before the trainer creates its log directory, so a bad count or
        an unwritable ``cache_dir`` fails before anything is written. Nothing to do for a file source.
        """
        if self.source is not None:
            return
        state = self.trainer.state.fn if self.trainer is not None else None
        for split in self.splits_for(state.value if state is not None else None):
            self.trajectories(split)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs (all when None) into memory; predict's keeps the true paths."""
        for split in self.splits_for(stage):
            name = "predict" if stage == "predict" else split
            if name not in self.datasets:
                self.datasets[name] = NBodyDataset(self.trajectories(split), self.history, self.input_frame,
                                                   self.target_frame, with_path=name == "predict")

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(name, name))
        return DataLoader(
            self.datasets[name],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,  # the dataset's __getitems__ batches are already collated
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
        """The test split, in order, with the true paths (``x_path``)."""
        return self._loader("predict", shuffle=False)
