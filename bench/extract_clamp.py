"""Extraction quality of the clamp: kohya's 0.99-quantile clamp against adapt's default clip.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/extract_clamp.py [--rank 32]

On every distinct layer shape of SD 1.5 (U-Net incl. 3x3 convs, text encoder; the bundled
configs built on "meta", no weights), two kinds of change go through the LoRA type's
``extract`` hook (what ``adapt extract`` runs per layer; randomized SVD, the default):

* ``fine-tune``: bench/tools.py's synthetic difference (singular values decaying as i^-0.5,
  plus noise), extracted at ``--rank``;
* ``exact``: a change of rank ``--rank / 4`` (random Gaussian factors), extracted at
  ``--rank``, so the optimal fit is exact.

For each it prints the relative Frobenius error ``||D - A||/||D||`` of the optimal rank-k
fit (exact SVD, no clamp), of ``--clamp_quantile 0.99`` (kohya's clamp, the old default) and
of the default clip, over the model (layers weighted by how many share the shape) and for
the worst layer as the excess over the optimum (percentage points). Both clamps are scale
invariant, so the size of the change does not matter.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tools import representatives, synthetic_difference  # noqa: E402

from adapters_core.ops.deltas import bundled_layer_shapes, extract_module, module_delta  # noqa: E402
from adapters_core.ops.extract import CLIP_BUDGET  # noqa: E402

VARIANTS = {
    "optimal": {"svd": "exact", "clamp_quantile": 1.0},
    "kohya_0.99": {"svd": "randomized", "clamp_quantile": 0.99},
    "default": {"svd": "randomized", "clip_budget": CLIP_BUDGET},
}


def exact_change(shape: torch.Size, rank: int, generator: torch.Generator) -> torch.Tensor:
    n = torch.Size(shape[1:]).numel()
    return (torch.randn(shape[0], rank, generator=generator) @ torch.randn(rank, n, generator=generator)).reshape(shape)


def measure(shapes: dict[str, torch.Size], rank: int, kind: str) -> dict[str, float]:
    names, counts = representatives(shapes)
    generator = torch.Generator().manual_seed(0)
    squares = dict.fromkeys(VARIANTS, 0.0)
    total = 0.0
    worst = {name: (0.0, "") for name in VARIANTS if name != "optimal"}
    for layer in names:
        shape = shapes[layer]
        k = max(1, min(rank, shape[0], shape[1]))
        change = synthetic_difference(shape, generator) if kind == "fine-tune" else exact_change(shape, rank // 4, generator)
        norm = float(change.norm())
        errors = {}
        for variant, options in VARIANTS.items():
            fitted = module_delta("lora", extract_module("lora", change, k, options), shape)
            errors[variant] = float((change - fitted).norm()) / norm
            squares[variant] += counts[shape] * (errors[variant] * norm) ** 2
        total += counts[shape] * norm**2
        for variant in worst:
            excess = errors[variant] - errors["optimal"]
            if excess > worst[variant][0]:
                worst[variant] = (excess, f"{layer} {tuple(shape)}")
    result: dict[str, float | str] = {f"{v}_error": (squares[v] / total) ** 0.5 for v in VARIANTS}
    for variant, (excess, layer) in worst.items():
        result[f"{variant}_worst_excess"] = excess
        result[f"{variant}_worst_layer"] = layer
    return result  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32, help="Extraction rank (the exact change has rank/4).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = bundled_layer_shapes("sd_v1")
    print(f"{len(shapes)} SD 1.5 layers, {len(set(shapes.values()))} distinct shapes, rank {args.rank}", flush=True)
    for kind in ("fine-tune", "exact"):
        numbers = measure(shapes, args.rank, kind)
        shown = {k: round(v, 5) if isinstance(v, float) else v for k, v in numbers.items()}
        print(f"{kind}:", json.dumps(shown), flush=True)


if __name__ == "__main__":
    main()
