"""Padded suffix tokens of the target optimisation: requests chunked in file order against `chunk_order`.

Each chunk of the target loop recomputes, for every row, as many tokens as the chunk's longest suffix
(key token to last target token, rounded up to a multiple of 4). This prints, for the first N records of
CounterFact and of zsRE with the packaged SmolLM2 PMET settings, the tokens recomputed per Adam step in
file order and in `chunk_order`, and the distinct (suffix, target length, row width) shapes each needs
(one compiled loop per shape). Tokenizer only: seconds on a CPU.

    python tools/target_padding.py [--counterfact 200] [--zsre 1037] [--method pmet]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from common import shared_data  # noqa: E402

import jaxedit  # noqa: E402
from jaxedit.edit.contexts import context_templates  # noqa: E402
from jaxedit.edit.memit import default_hparams  # noqa: E402
from jaxedit.edit.requests import as_request  # noqa: E402
from jaxedit.edit.targets import build_batch, chunk_order, rows_for_budget, suffix_window  # noqa: E402
from jaxedit.evaluate.zsre import read_zsre  # noqa: E402


def padding(batch, order: np.ndarray, per_chunk: int) -> tuple[int, int]:
    """Suffix tokens recomputed per step over all chunks, and the number of distinct chunk shapes."""
    tokens, shapes = 0, set()
    for start in range(0, len(order), per_chunk):
        rows = np.isin(batch.row_request, order[start : start + per_chunk])
        window = suffix_window(batch, rows)
        width = -(-int(batch.mask[rows].sum(axis=1).max()) // 8) * 8
        shapes.add((window, int((batch.weights[rows] > 0).sum(axis=1).max()), width))
        tokens += window * int(rows.sum())
    return tokens, len(shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counterfact", type=int, default=200)
    parser.add_argument("--zsre", type=int, default=1037)
    parser.add_argument("--method", default="pmet")
    args = parser.parse_args()
    model = jaxedit.load_model("smollm2")
    hp = default_hparams(model, args.method)
    templates = context_templates(model, hp.prefixes)
    per_chunk = max(1, rows_for_budget(model.config, max(hp.layers), 2 * 2**30) // (len(templates) + 1))
    records = json.loads(shared_data("counterfact_easyedit", "counterfact-edit.json").read_text())
    zsre, _ = read_zsre(shared_data("zsre", "zsre_mend_edit.json"))
    sets = {
        f"counterfact-edit first {args.counterfact}": [as_request(r) for r in records[: args.counterfact]],
        f"zsre_mend_edit first {args.zsre}": [c.request for c in zsre[: args.zsre]],
    }
    print(f"{args.method}: layer {max(hp.layers)}, {len(templates)} contexts, {per_chunk} requests per chunk")
    for name, requests in sets.items():
        batch = build_batch(model, requests, templates, hp.targets.kl_prompt, hp.targets.key_token)
        file_tokens, file_shapes = padding(batch, np.arange(len(requests)), per_chunk)
        sorted_tokens, sorted_shapes = padding(batch, chunk_order(batch, len(requests)), per_chunk)
        print(
            f"{name}: file order {file_tokens} tokens ({file_shapes} shapes), chunk_order {sorted_tokens} "
            f"({sorted_shapes} shapes): {1 - sorted_tokens / file_tokens:.0%} fewer"
        )


if __name__ == "__main__":
    main()
