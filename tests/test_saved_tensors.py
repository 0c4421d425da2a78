"""The accounting of what a forward pass keeps for its backward (benchmarks' activation memory)."""

from __future__ import annotations

import torch
from torch import nn

from set_lightning.saved_tensors import saved_for_backward


def test_counts_distinct_storages_per_layer_without_parameters():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2))
    x = torch.randn(10, 4)
    with saved_for_backward(net, [net[0], net[2]]) as saved:
        out = net(x)
        out.sum().backward()
    # Linear 1 keeps x (the weights are parameters), the SiLU its input, Linear 2 the SiLU's output
    assert saved.total == 4 * (10 * 4 + 10 * 8 + 10 * 8)
    assert [sum(d.values()) for d in saved.per_layer] == [4 * 10 * 4, 4 * 10 * 8]
    assert saved.largest_layer == 4 * 10 * 8


def test_a_storage_saved_twice_counts_once_and_hooks_are_removed():
    net = nn.Linear(3, 3)
    x = torch.randn(6, 3, requires_grad=True)
    with saved_for_backward(net, [net]) as saved:
        y = x * x[:2].sum()  # mul keeps x and the (0-d) sum; the view x[:2] is x's storage
        y.sum().backward()
    assert saved.total == x.untyped_storage().nbytes() + 4
    with saved_for_backward(net, [net]) as again:
        pass
    net(x)  # no hook left behind: the first account does not grow, a new one records nothing
    assert again.total == 0 and not net._forward_hooks and not net._forward_pre_hooks
