"""Charged N-body data: batched simulator, on-disk cache, datasets and the LightningDataModule."""

from set_lightning.data.cache import (
    CacheWarning,
    Trajectories,
    TrajectorySpec,
    generate_trajectories,
    load_or_generate,
    load_trajectories,
    save_trajectories,
    split_seed,
)
from set_lightning.data.datamodule import NBodyDataModule, validate_nbody_params
from set_lightning.data.datasets import CLOSE_ENCOUNTER, NBodyDataset, min_pair_distance
from set_lightning.data.simulator import (
    default_loc_std,
    n_saved_frames,
    sample_initial_conditions,
    simulate_charged,
    total_energy,
)

__all__ = [
    "CLOSE_ENCOUNTER",
    "min_pair_distance",
    "CacheWarning",
    "NBodyDataModule",
    "NBodyDataset",
    "Trajectories",
    "TrajectorySpec",
    "default_loc_std",
    "generate_trajectories",
    "load_or_generate",
    "load_trajectories",
    "n_saved_frames",
    "sample_initial_conditions",
    "save_trajectories",
    "simulate_charged",
    "split_seed",
    "total_energy",
    "validate_nbody_params",
]
