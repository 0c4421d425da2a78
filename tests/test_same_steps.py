"""The cheaper training loop computes the same numbers: batches fetched in one indexing per tensor equal
the per-sample collated ones, and the multi-tensor Adam step equals torch's per-parameter loop bit for bit
(so a run repeats, value for value, a run made before these changes)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from set_lightning.data import NBodyDataModule
from set_lightning.data.datasets import Batched, NBodyDataset, collate
from set_lightning.lit import NBodyLightningModule
from set_lightning.models import build_model


@pytest.fixture(scope="module")
def springs(data_cache):
    """A split with an extra per-sample tensor (the spring graph's edge_attr) and the true paths."""
    dm = NBodyDataModule(system="springs", n_train=12, n_val=4, n_test=4, history=3, batch_size=5,
                         cache_dir=str(data_cache))
    dm.prepare_data()
    return NBodyDataset(dm.trajectories("train"), history=3, input_frame=dm.input_frame,
                        target_frame=dm.target_frame, with_path=True)


def test_batched_fetch_equals_per_sample_collate(springs):
    indices = [7, 0, 11, 3, 3]
    batch = springs.__getitems__(indices)
    assert isinstance(batch, Batched)
    reference = default_collate([springs[i] for i in indices])
    assert set(batch) == set(reference) >= {"x", "edge_attr", "x_path", "min_dist"}
    for key, value in reference.items():
        assert batch[key].shape == value.shape and torch.equal(batch[key], value), key
    # collate passes a fetched batch through and collates a list of samples as before
    assert collate(batch).keys() == batch.keys()
    assert torch.equal(collate([springs[1], springs[2]])["x"], torch.stack([springs[1]["x"], springs[2]["x"]]))


def test_loader_batches_are_the_per_sample_batches_in_the_same_order(springs):
    def batches(collate_fn, dataset):
        loader = DataLoader(dataset, batch_size=5, shuffle=True, collate_fn=collate_fn,
                            generator=torch.Generator().manual_seed(3))
        return list(loader)

    class PerSample(torch.utils.data.Dataset):  # the same samples without __getitems__
        def __len__(self):
            return len(springs)

        def __getitem__(self, i):
            return springs[i]

    fast, slow = batches(collate, springs), batches(None, PerSample())
    assert [b["x"].shape[0] for b in fast] == [5, 5, 2]
    for a, b in zip(fast, slow, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["set", "egnn"])
def test_adam_step_equals_the_per_parameter_loop(name, data_cache):
    dm = NBodyDataModule(n_train=8, n_val=4, n_test=4, history=3, batch_size=4, cache_dir=str(data_cache))
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    small = dict(hidden=16, n_blocks=1, n_heads=2) if name == "set" else dict(hidden=16, n_layers=2)
    module = NBodyLightningModule(build_model(name, **small), lr=3e-3, weight_decay=1e-4)
    twin = copy.deepcopy(module)
    opt = module.make_optimizer()
    loop = torch.optim.Adam(twin.parameters(), lr=3e-3, weight_decay=1e-4, foreach=False)
    assert opt.defaults["foreach"] is True
    for step, batch in enumerate(list(dm.train_dataloader()) * 3):
        for mod, optim in ((module, opt), (twin, loop)):
            torch.manual_seed(step)  # the same dropout masks for both
            optim.zero_grad()
            mod.losses(batch)[0].backward()
            optim.step()
    moved = [not torch.equal(a, b) for a, b in zip(module.parameters(), build_model(name, **small).parameters())]
    assert any(moved)
    for a, b in zip(module.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
