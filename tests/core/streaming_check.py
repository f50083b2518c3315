"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_sharding.py).

`python tests/core/streaming_check.py WORKDIR`: for a tiny model of every family saved as sharded safetensors
(several files and an index), `load_model(..., mesh=...)` must put every parameter into its target
sharding as soon as its tensors are read (placements interleave with reads), and give the unsharded
logits. Exits non-zero with a message on any failure; prints OK at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: hf_tiny
from hf_tiny import TINY_CONFIGS, save_tiny

from jaxedit import forward, load_model
from jaxedit.core import layout, sharding
from jaxedit.io.checkpoints import directory_source
from jaxedit.io.families import family_module
from jaxedit.io.loading import params_from_source

assert jax.device_count() == 8, jax.devices()


def recorded(fn, events: list[str], tag: str):
    """`fn` that first appends `tag` to `events`."""

    def wrapper(*args, **kwargs):
        events.append(tag)
        return fn(*args, **kwargs)

    return wrapper


mesh = sharding.make_mesh({"data": 2, "model": 4})
work = Path(sys.argv[1])

for name in TINY_CONFIGS:
    directory = work / name
    save_tiny(name, directory, max_shard_size="40KB")
    files = sorted(p.name for p in directory.glob("*.safetensors"))
    if len(files) < 2 or not (directory / "model.safetensors.index.json").exists():
        sys.exit(f"{name}: expected a sharded checkpoint, got {files}")
    plain = load_model(directory)
    placed = load_model(directory, mesh=mesh, uneven="replicate")
    shardings = sharding.param_shardings(plain.config, mesh, uneven="replicate")
    events: list[str] = []
    source = directory_source(directory)
    put = jax.device_put
    source.get = recorded(source.get, events, "read")
    jax.device_put = recorded(put, events, "place")
    try:
        params_from_source(plain.config, source, family_module(plain.config.family), shardings)
    finally:
        jax.device_put = put
    n_params = len(layout.flatten(plain.params))
    # streaming: parameters go to their devices while later tensors are still unread
    if events.count("place") != n_params or events.index("place") > len(events) - events[::-1].index("read"):
        sys.exit(f"{name}: parameters were not placed while reading: {''.join(e[0] for e in events)}")
    want = layout.flatten(sharding.param_shardings(placed.config, mesh, uneven="replicate"))
    for path, leaf in layout.flatten(placed.params).items():
        if leaf.sharding != want[path]:
            sys.exit(f"{name}: {path} has sharding {leaf.sharding}, expected {want[path]}")
    kernel = placed.params["layers"]["mlp"]["out"]["kernel"]
    if len(kernel.sharding.device_set) != 8 or kernel.sharding.is_fully_replicated:
        sys.exit(f"{name}: mlp/out/kernel is not distributed: {kernel.sharding}")
    ids = np.random.default_rng(0).integers(0, plain.config.vocab_size, (2, 10))
    err = float(np.abs(np.asarray(forward(placed.params, placed.config, ids).logits)
                       - np.asarray(forward(plain.params, plain.config, ids).logits)).max())  # fmt: skip
    if err > 1e-5:
        sys.exit(f"{name}: streamed-and-sharded logits differ by {err}")
    print(f"{name}: {len(files)} files, logits |diff| {err:.1e}, reads and placements "
          f"{''.join(e[0] for e in events)}")  # fmt: skip
print("OK")
