"""N-body data: batched simulators (charged, springs, gravity), on-disk cache, user trajectory files,
datasets and the LightningDataModule."""

from set_lightning.data.cache import (
    SPECS,
    SYSTEMS,
    CacheWarning,
    GravitySpec,
    SpringsSpec,
    Trajectories,
    TrajectorySpec,
    generate_trajectories,
    load_or_generate,
    load_trajectories,
    save_trajectories,
    split_seed,
)
from set_lightning.data.datamodule import NBodyDataModule, validate_nbody_params, validate_system_options
from set_lightning.data.datasets import CLOSE_ENCOUNTER, NBodyDataset, min_pair_distance
from set_lightning.data.gravity import gravity_energy, gravity_frames, sample_gravity, simulate_gravity
from set_lightning.data.simulator import (
    default_loc_std,
    n_saved_frames,
    sample_initial_conditions,
    simulate_charged,
    total_energy,
)
from set_lightning.data.source import SOURCE_KEYS, load_source, split_source
from set_lightning.data.springs import sample_springs, simulate_springs, springs_energy

__all__ = [
    "CLOSE_ENCOUNTER",
    "SOURCE_KEYS",
    "SPECS",
    "SYSTEMS",
    "GravitySpec",
    "SpringsSpec",
    "gravity_energy",
    "gravity_frames",
    "load_source",
    "sample_gravity",
    "sample_springs",
    "simulate_gravity",
    "simulate_springs",
    "split_source",
    "springs_energy",
    "validate_system_options",
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
