"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_sharding.py).

A PMET batch edit with the params sharded over an 8-device mesh must equal the unsharded edit within
1e-4 (the deltas, and the edited logits). Exits non-zero with a message on any mismatch.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: hf_tiny
from hf_tiny import tiny_tokenizer

from jaxedit import forward
from jaxedit.core import layout, sharding
from jaxedit.core.config import ModelConfig
from jaxedit.edit import Request, apply, key_statistics
from jaxedit.edit.memit import memit, pmet_hparams
from jaxedit.io.loading import Model

assert jax.device_count() == 8, jax.devices()

config = ModelConfig(
    family="llama", vocab_size=128, d_model=64, n_layers=3, n_heads=8, n_kv_heads=4, head_dim=8,
    d_mlp=96, max_positions=64, norm="rmsnorm", norm_eps=1e-6, activation="silu", gated_mlp=True,
    positions="rotary", rotary_dim=8, tie_embeddings=False,
)  # fmt: skip
model = Model(
    config=config,
    params=layout.init_params(config, seed=3, scale=0.3),
    tokenizer=tiny_tokenizer(),
    source="tiny",
)
requests = [
    Request(prompt="the mother tongue of {} is", subject="danielle darrieux", target="english"),
    Request(prompt="the eiffel tower is located in the city of {}", subject="paris", target="rome"),
]
templates = ["{}", "the city of rome . {}"]
words = sorted(w for w in model.tokenizer.get_vocab() if w != "<unk>")
rng = np.random.default_rng(0)
texts = [" ".join(rng.choice(words, 12)) for _ in range(80)]
stats = key_statistics(model, [0, 1], texts, cache=False, progress=False)
hp = pmet_hparams(layers=(0, 1), mom2_weight=1.0)
hp = dataclasses.replace(hp, targets=dataclasses.replace(hp.targets, steps=5))
ids = np.asarray([model.tokenizer("the mother tongue of danielle darrieux is")["input_ids"]])

reference = memit(model, requests, stats, hp, templates=templates, progress=False)
reference_logits = np.asarray(forward(apply(model, reference).params, config, ids).logits)

mesh = sharding.make_mesh({"data": 1, "model": 8})
placed = model.replace(params=sharding.shard(model.params, config, mesh))
kernel = placed.params["layers"]["mlp"]["out"]["kernel"]
if kernel.sharding.is_fully_replicated:
    sys.exit(f"params are not distributed: {kernel.sharding}")
with jax.set_mesh(mesh):
    delta = memit(placed, requests, stats, hp, templates=templates, progress=False)
    edited = apply(placed, delta)
    logits = np.asarray(forward(edited.params, config, ids).logits)
diff = float(np.abs(delta.dense() - reference.dense()).max())
scale = float(np.abs(reference.dense()).max())
logit_diff = float(np.abs(logits - reference_logits).max())
print(
    f"PMET 2 edits, layers 0-1: max |delta difference| {diff:.2e} (delta scale {scale:.2e}), logits {logit_diff:.2e}"
)
if diff > 1e-4 * max(1.0, scale) or logit_diff > 1e-4:
    sys.exit("sharded PMET differs from unsharded")
print("OK")
