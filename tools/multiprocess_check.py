"""One process of a multi-process check (start it with `tools/launch_local.py`).

On a mesh over every process's devices (`data` × `model`: 2 × 4 for 2 processes of 4 simulated CPU
devices) it runs, with params sharded across the processes: the forward pass, a causal-trace sweep and
a MEMIT batch, and compares each with the same computation on unsharded params in this process.
With `--save DIR`, every process then saves the MEMIT-edited sharded model as one orbax checkpoint
(`jaxedit.scale.sharded_checkpoint.save_sharded`, into `DIR/checkpoint`) and the key statistics of the
MEMIT layers (`DIR/statistics`), and process 0 writes the edited model's logits on the check's token ids
and the statistics matrices to `DIR/expected.npz` (`ids`, `logits`, `stats_<layer>`), for a restore
elsewhere (tests/scale/sharded_checkpoint_check.py).
Prints `OK <what> <max difference>` per check; exits non-zero on a mismatch.

    python tools/launch_local.py --processes 2 tools/multiprocess_check.py --cpu-devices 4 MODEL_DIR
"""

from __future__ import annotations

import argparse
import sys

from jaxedit.scale import distributed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a small Hugging Face model directory (with its tokenizer)")
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--cpu-devices", type=int)
    parser.add_argument("--save", help="a directory (the same for every process) to save the edited model in")
    args = parser.parse_args()
    distributed.initialize(
        args.coordinator, args.num_processes, args.process_id, cpu_devices=args.cpu_devices
    )

    from pathlib import Path

    import jax
    import numpy as np

    import jaxedit
    from jaxedit.core import sharding
    from jaxedit.edit import apply, memit
    from jaxedit.edit.memit import MemitHparams
    from jaxedit.edit.stats import key_statistics
    from jaxedit.edit.targets import TargetHparams
    from jaxedit.trace import Noise, trace

    n = jax.device_count()
    assert jax.process_count() == args.num_processes and n > jax.local_device_count(), jax.devices()
    model = jaxedit.load_model(args.model)
    model = model.replace(params=jax.tree.map(lambda a: a * 3 if a.ndim >= 2 else a, model.params))
    mesh = sharding.make_mesh({"data": args.num_processes, "model": n // args.num_processes})
    sharded = model.replace(params=sharding.shard(model.params, model.config, mesh, uneven="replicate"))
    kernel = sharded.params["layers"]["mlp"]["out"]["kernel"]
    assert not kernel.is_fully_addressable, "params should be spread over the processes"
    failures = 0

    def check(what: str, got: np.ndarray, want: np.ndarray, tolerance: float) -> None:
        nonlocal failures
        diff = float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max())
        failures += diff > tolerance
        print(f"{'OK' if diff <= tolerance else 'FAIL'} {what} {diff:.2e}", flush=True)

    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (4, 16)).astype(np.int32)
    logits = distributed.gather(jaxedit.forward(sharded.params, model.config, ids).logits)
    check("forward", logits, jaxedit.forward(model.params, model.config, ids).logits, 1e-4)

    kwargs = dict(subject="the eiffel tower", noise=Noise(0.5, samples=2), window=2, kinds=("hidden", "mlp"))
    prompt = "the eiffel tower is located in the city of"
    a, b = trace(sharded, prompt, **kwargs), trace(model, prompt, **kwargs)
    check(
        "trace",
        np.stack([a.grids[k] for k in kwargs["kinds"]]),
        np.stack([b.grids[k] for k in kwargs["kinds"]]),
        1e-5,
    )

    words = ["the", "city", "of", "paris", "rome", "france", "capital", "is", "located", "in",
             "tower", "a", "an", "and", "to"]  # fmt: skip
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(words, 12)) for _ in range(80)]
    hp = MemitHparams(layers=(0, 1), targets=TargetHparams(steps=5, reference="resid_post"))
    requests = [
        {"prompt": "{} is located in the city of", "subject": "the eiffel tower", "target": "rome"},
        {"prompt": "the capital of {} is", "subject": "france", "target": "rome"},
    ]
    stats = [key_statistics(m, [0, 1], texts, cache=False, progress=False) for m in (sharded, model)]
    deltas = [
        memit(m, requests, s, hp, templates=["{}", "the city . {}"], progress=False)
        for m, s in zip((sharded, model), stats, strict=True)
    ]
    dense = [d.dense() for d in deltas]
    check("memit", dense[0] / np.abs(dense[1]).max(), dense[1] / np.abs(dense[1]).max(), 1e-3)
    if args.save:
        from jaxedit.scale.sharded_checkpoint import save_sharded, save_statistics_sharded

        edited, local = apply(sharded, deltas[0]), apply(model, deltas[0])
        edited_logits = distributed.gather(jaxedit.forward(edited.params, model.config, ids).logits)
        check("edited forward", edited_logits, jaxedit.forward(local.params, model.config, ids).logits, 1e-4)
        # every process saves: each writes the shards it holds (the statistics' rows spread over the mesh)
        save_sharded(edited, Path(args.save) / "checkpoint")
        save_statistics_sharded(stats[0], Path(args.save) / "statistics", mesh=mesh)
        if jax.process_index() == 0:
            matrices = {f"stats_{layer}": s.matrix for layer, s in stats[0].items()}
            np.savez(Path(args.save) / "expected.npz", ids=ids, logits=edited_logits, **matrices)
        print(f"OK save {len(edited.edits)} edit(s) from process {jax.process_index()}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
