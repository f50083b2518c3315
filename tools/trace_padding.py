"""Work of a traced prompt set under each way of padding its prompts (`trace_dataset(shapes=...)`).

For SmolLM2's known facts in `known_1000.json` (all the records, or the first N), subject- and
relation-corrupted, prints the rows the three grid programs (hidden, MLP, attention; 10 samples,
window 10, 4 layer segments) recompute over the whole set, relative to padding each prompt to its own
bucket: with one shape for the set (`single`), with the prompts grouped by length into k shapes
(`shape_groups`), and how many grid programs each compiles per kind. One batched forward pass per 32
records (to find the known facts) and host-side plans: a minute on a CPU.

    python tools/trace_padding.py [--n N] [--bucket 8] [--groups 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from common import shared_data  # noqa: E402

import jaxedit  # noqa: E402
from jaxedit.data import read_records  # noqa: E402
from jaxedit.trace import dataset, schedule  # noqa: E402

KINDS = ("hidden", "mlp", "attn")


def grid_rows(n_layers: int, shape: tuple[int, int]) -> int:
    """Rows recomputed by the three grid programs of one prompt padded to `shape` = (length, live)."""
    return sum(
        schedule.build_plan(kind, n_layers, *shape, 10, 10, "code", None, 4).recomputed_rows()
        for kind in KINDS
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="known facts (default: all in the file)")
    parser.add_argument("--bucket", type=int, default=8, help="prompt lengths padded to multiples of this")
    parser.add_argument("--groups", type=int, default=4, help="largest number of shape groups shown")
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()
    model = jaxedit.load_model(args.model)
    records = read_records(shared_data("rets", "known_1000.json"))
    layers = model.config.n_layers
    for corrupt in ("subject", "relation"):
        kept, considered = dataset.known_facts(model, records, corrupt, args.n)
        prompts = [(len(ids), int(np.argmax(mask))) for *_, ids, mask, _ in kept]
        lengths = np.array([n for n, _ in prompts])
        own = [dataset.common_shape([prompt], args.bucket) for prompt in prompts]  # each alone
        base = sum(grid_rows(layers, s) for s in own)
        print(
            f"{corrupt} corruption: {len(kept)} known facts of {considered} records, prompts of "
            f"{lengths.min()}-{lengths.max()} tokens (median {np.median(lengths):.0f}), bucket {args.bucket}"
        )
        print(f"  own bucket per prompt: {len(set(own))} programs per kind, work 1.00")
        for groups in range(1, args.groups + 1):
            pads = dataset.shape_groups(prompts, args.bucket, groups, layers, 10)
            work = sum(grid_rows(layers, s) for s in pads) / base
            label = "single" if groups == 1 else f"{groups} groups"
            print(f"  {label:<9} {sorted(set(pads))}: {len(set(pads))} programs per kind, work {work:.2f}")


if __name__ == "__main__":
    main()
