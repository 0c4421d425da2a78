"""Check that the working tree's models compute the same function as an older revision's.

    python benchmarks/same_numerics.py b1aceb6

For every model of the registry (SET with every combination of its six flags on every graph kind, the
baselines as configured), the model of revision REV (loaded with ``speed.load_models_at``) and the
working tree's model get the same state_dict (the keys must be equal) and the same random float64
inputs; their outputs and the gradients with respect to the inputs and every parameter must agree to
``--tol`` (default 1e-10). Dropout is off (eval mode) so that the two draw no random numbers.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import load_models_at  # noqa: E402

from set_lightning.models import MODELS  # noqa: E402

FLAGS = ("equivariant", "spatial_attention", "temporal_attention", "adjacency", "norm_diff", "tanh")
GRAPHS = [dict(graph="complete"), dict(graph="knn", k=2), dict(graph="given", node_dim=2, edge_dim=1),
          dict(graph="complete", node_dim=2, edge_dim=2)]


def inputs(kind: dict, b: int = 3, ell: int = 4, n: int = 5) -> tuple[list[torch.Tensor], dict]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, ell, n, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, ell, n, 3, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randint(0, 2, (b, n, 1), generator=g).double() * 2 - 1
    extra = {}
    if kind.get("node_dim"):
        extra["node_attr"] = torch.cat([q, torch.randn(b, n, 1, generator=g, dtype=torch.float64)], -1)
    if kind.get("edge_dim"):
        e = torch.randn(b, n, n, kind["edge_dim"], generator=g, dtype=torch.float64)
        e[..., 0] = (e[..., 0] > 0).double()
        extra["edge_attr"] = e
    return [x, v, q], extra


def outputs_and_grads(model: torch.nn.Module, args: list[torch.Tensor], extra: dict) -> list[torch.Tensor]:
    out = model(*args, **extra)
    leaves = [t for t in args if t.requires_grad] + list(model.parameters())
    weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=o.dtype)
               for i, o in enumerate(out)]
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), leaves, allow_unused=True)
    return list(out) + [torch.zeros(()) if gr is None else gr for gr in grads]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev")
    parser.add_argument("--tol", type=float, default=1e-10)
    args = parser.parse_args()
    old = load_models_at(args.rev)
    cases = [("set", dict(zip(FLAGS, c), **kind)) for kind in GRAPHS for c in itertools.product([True, False], repeat=6)
             if not (c[3] and kind["graph"] != "complete")]
    cases += [("egnn", kind) for kind in GRAPHS] + [(name, {}) for name in ("mlp", "lstm", "linear")]
    worst, failed = 0.0, 0
    for name, kw in cases:
        if name == "set":
            kw = dict(hidden=16, n_blocks=2, n_spatial_layers=2, n_heads=2, **kw)
        elif name == "egnn":
            kw = dict(hidden=16, **kw)
        torch.manual_seed(0)
        new_model = MODELS[name](**kw).double().eval()
        old_model = old.MODELS[name](**kw).double().eval()
        with torch.no_grad():
            for p in new_model.parameters():
                p.copy_(0.3 * torch.randn_like(p))
        state = new_model.state_dict()
        if list(state) != list(old_model.state_dict()):
            raise SystemExit(f"{name} {kw}: state_dict keys differ")
        old_model.load_state_dict(state)
        args_, extra = inputs(kw)
        a = outputs_and_grads(new_model, args_, extra)
        b = outputs_and_grads(old_model, args_, extra)
        diff = max(float((x - y).detach().abs().max()) if x.numel() else 0.0 for x, y in zip(a, b))
        worst = max(worst, diff)
        if diff > args.tol:
            failed += 1
            print(f"DIFFERENT {name} {kw}: max abs difference {diff:.3g}")
    print(f"{len(cases)} models (SET: every flag combination x {len(GRAPHS)} graph kinds; EGNN; baselines): "
          f"outputs and gradients vs {args.rev}, float64, max abs difference {worst:.3g}; "
          f"{'all equal' if not failed else f'{failed} differ'} to {args.tol:g}; state_dict keys equal")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
