"""One process of a multi-process check (start it with `tools/launch_local.py`).

On a mesh over every process's devices (`data` × `model`: 2 × 4 for 2 processes of 4 simulated CPU
devices) it runs, with params sharded across the processes: the forward pass, a causal-trace sweep and
a MEMIT batch, and compares each with the same computation on unsharded params in this process.
Prints `OK <what> <max difference>` per check; exits non-zero on a mismatch.

    python tools/launch_local.py --processes 2 tools/multiprocess_check.py --cpu-devices 4 MODEL_DIR
"""

from __future__ import annotations

import argparse
import sys

from jaxedit import distributed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a small Hugging Face model directory (with its tokenizer)")
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--cpu-devices", type=int)
    args = parser.parse_args()
    distributed.initialize(
        args.coordinator, args.num_processes, args.process_id, cpu_devices=args.cpu_devices
    )

    import jax
    import numpy as np

    import jaxedit
    from jaxedit import sharding
    from jaxedit.edit import memit
    from jaxedit.edit.memit import MemitHparams
    from jaxedit.edit.stats import key_statistics
    from jaxedit.edit.targets import TargetHparams
    from jaxedit.trace import trace

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

    kwargs = dict(subject="the eiffel tower", samples=2, noise=0.5, window=2, kinds=("hidden", "mlp"))
    prompt = "the eiffel tower is located in the city of"
    a, b = trace(sharded, prompt, **kwargs), trace(model, prompt, **kwargs)
    check(
        "trace",
        np.stack([a.grids[k] for k in kwargs["kinds"]]),
        np.stack([b.grids[k] for k in kwargs["kinds"]]),
        1e-5,
    )

    words = [
        "the",
        "city",
        "of",
        "paris",
        "rome",
        "france",
        "capital",
        "is",
        "located",
        "in",
        "tower",
        "a",
        "an",
        "and",
        "to",
    ]
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(words, 12)) for _ in range(80)]
    hp = MemitHparams(layers=(0, 1), targets=TargetHparams(steps=5, reference="resid_post"))
    requests = [
        {"prompt": "{} is located in the city of", "subject": "the eiffel tower", "target": "rome"},
        {"prompt": "the capital of {} is", "subject": "france", "target": "rome"},
    ]
    deltas = [
        memit(m, requests, key_statistics(m, [0, 1], texts, cache=False, progress=False), hp,
              templates=["{}", "the city . {}"], progress=False).dense()
        for m in (sharded, model)
    ]  # fmt: skip
    check("memit", deltas[0] / np.abs(deltas[1]).max(), deltas[1] / np.abs(deltas[1]).max(), 1e-3)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
