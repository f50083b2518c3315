"""Sharded orbax checkpoints across meshes and process counts (see test_multiprocess.py).

    python sharded_checkpoint_check.py SAVED OUT    # one process, 8 simulated devices

SAVED is the `--save` directory of the 2-process run (tools/multiprocess_check.py: a MEMIT-edited tiny
Llama and its key statistics, saved from 2 processes x 4 devices, with the logits and matrices they
gave in `expected.npz`). Here, in one process:

1. the 2-process checkpoint restored on a 4-device mesh gives the same logits, with its MEMIT edit;
2. that model, restored on an 8-device mesh, saved with its journal and merged, restores on 4 devices
   with the same logits (the edit withdrawable), and a second save over the first replaces it;
3. the 2-process statistics restore whole and on 4 devices, and survive a round trip from 8 devices.

Prints one line per check and `OK`; exits non-zero on a failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

import jaxedit
from jaxedit.core import sharding
from jaxedit.io.files import owned_files
from jaxedit.scale.sharded_checkpoint import (
    restore_sharded,
    restore_statistics_sharded,
    save_sharded,
    save_statistics_sharded,
)


def same(what: str, got, want, atol: float = 1e-5) -> None:
    diff = float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max())
    if not diff <= atol:
        sys.exit(f"FAIL {what}: max |diff| {diff:.3g} > {atol}")
    print(f"{what}: max |diff| {diff:.2e}")


def mlp_shard(model: jaxedit.Model) -> tuple[int, ...]:
    kernel = model.params["layers"]["mlp"]["out"]["kernel"]
    return kernel.sharding.shard_shape(kernel.shape)


def main(saved: Path, out: Path) -> None:
    assert jax.device_count() == 8 and jax.process_count() == 1, jax.devices()
    eight, four = sharding.make_mesh(), sharding.make_mesh(devices=jax.devices()[:4])
    expected = np.load(saved / "expected.npz")
    ids = expected["ids"]

    def logits(model: jaxedit.Model) -> np.ndarray:
        return np.asarray(jaxedit.forward(model.params, model.config, ids).logits)

    # 1. 2 processes x 4 devices -> 1 process x 4 devices
    restored = restore_sharded(saved / "checkpoint", four, uneven="replicate")
    assert [e.method for e in restored.edits] == ["memit"] and mlp_shard(restored) == (3, 24, 64)
    same("2 processes x 4 devices -> 1 process x 4, logits", logits(restored), expected["logits"])

    # 2. 8 devices -> 4, with the journal and merged; a save over an earlier checkpoint replaces it
    model = restore_sharded(saved / "checkpoint", eight, uneven="replicate")
    assert mlp_shard(model) == (3, 12, 64), mlp_shard(model)
    want = logits(model)
    journal_dir, merged_dir = out / "journal", out / "merged"
    save_sharded(model, journal_dir)
    save_sharded(model, merged_dir, merged=True)
    back = restore_sharded(journal_dir, four, uneven="replicate")
    assert [e.id for e in back.edits] == [e.id for e in model.edits] and back.tokenizer is not None
    assert back.base_fingerprint == model.base_fingerprint and mlp_shard(back) == (3, 24, 64)
    same("journal 8 -> 4 devices, logits", logits(back), want)
    same("journal 8 -> 4 devices, edit withdrawn", logits(back.unedited()), logits(model.unedited()))
    merged = restore_sharded(merged_dir, four, uneven="replicate")
    assert not merged.edits and merged.fingerprint == model.fingerprint
    same("merged 8 -> 4 devices, logits", logits(merged), want)
    save_sharded(merged, journal_dir)  # no edits: params only, replacing the journal checkpoint
    files = {p.relative_to(journal_dir).as_posix() for p in journal_dir.rglob("*") if p.is_file()}
    assert not any(f.startswith(("journal/", "state-1/")) for f in files), sorted(files)
    assert files - owned_files(journal_dir) == {".jaxedit-files.json"}, sorted(files)
    same("replaced checkpoint, logits", logits(restore_sharded(journal_dir, four, uneven="replicate")), want)

    # 3. statistics: saved by 2 processes, restored whole and on 4 devices; 8 devices -> whole
    whole = restore_statistics_sharded(saved / "statistics")
    assert sorted(whole) == [0, 1] and all(isinstance(s.matrix, np.ndarray) for s in whole.values())
    for layer, s in whole.items():
        s.check(model, layer)
        same(f"statistics layer {layer}, 2 processes -> whole", s.matrix, expected[f"stats_{layer}"], 0.0)
    placed = restore_statistics_sharded(saved / "statistics", four)
    assert placed[1].matrix.sharding.shard_shape(placed[1].matrix.shape) == (24, 96)
    same("statistics, 2 processes -> 4 devices", np.asarray(placed[1].matrix), expected["stats_1"], 0.0)
    save_statistics_sharded(restore_statistics_sharded(saved / "statistics", eight), out / "stats")
    again = restore_statistics_sharded(out / "stats")
    assert all(again[layer].meta == whole[layer].meta for layer in whole)
    same("statistics, 8 devices -> whole", again[0].matrix, expected["stats_0"], 0.0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
    print("OK")
