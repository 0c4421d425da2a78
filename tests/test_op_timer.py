"""The benchmarks' op timer (benchmarks/step_harness.py, `speed.py --breakdown`): it sees every aten op of the
forward and the backward, and splits matrix products from the rest."""

import torch

from benchmarks.step_harness import OpTimer


def test_op_timer_splits_matrix_products_from_other_ops_in_forward_and_backward():
    a = torch.randn(300, 64, requires_grad=True)
    w = torch.randn(64, 64, requires_grad=True)
    v = torch.randn(64)
    with OpTimer() as timer:
        out = torch.nn.functional.silu(a @ w) @ v  # mm, silu, mv
        out.sum().backward()  # and in the backward: mm (grads of a and w), silu_backward, outer products
    ops = {key[0] for key in timer.ms}
    assert {"mm", "mv", "silu", "silu_backward"} <= ops
    assert {op for op, *_ in timer.top(20, matmul=True)} <= {"mm", "mv", "addmm", "addmv", "addmv_", "addmm_"}
    assert not {op for op, *_ in timer.top(20, matmul=False)} & {"mm", "mv"}
    # recorded by shapes: the forward a @ w and the backward grad @ w.T have the same shapes
    assert timer.calls[("mm", ((300, 64), (64, 64)))] == 2
    assert timer.matmul_ms > 0 and timer.other_ms > 0
    assert abs(timer.matmul_ms + timer.other_ms - sum(timer.ms.values())) < 1e-9


def test_op_timer_time_grows_with_the_work():
    small, large = torch.randn(64, 64), torch.randn(1024, 1024)
    with OpTimer() as timer:
        for _ in range(3):
            small @ small
            large @ large
    assert timer.ms[("mm", ((1024, 1024), (1024, 1024)))] > 10 * timer.ms[("mm", ((64, 64), (64, 64)))]
