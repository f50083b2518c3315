"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_sharding.py).

Checks that params really are spread over 8 devices and that the sharded forward (and generation)
equal the unsharded ones. Exits non-zero with a message on any mismatch.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from jaxedit import forward, generate
from jaxedit.core import layout, sharding
from jaxedit.core.config import ModelConfig

assert jax.device_count() == 8, jax.devices()

CONFIGS = {
    "llama": ModelConfig(
        family="llama", vocab_size=128, d_model=64, n_layers=2, n_heads=8, n_kv_heads=4, head_dim=8,
        d_mlp=96, max_positions=64, norm="rmsnorm", norm_eps=1e-6, activation="silu", gated_mlp=True,
        positions="rotary", rotary_dim=8, tie_embeddings=False,
    ),
    "gpt2": ModelConfig(
        family="gpt2", vocab_size=256, d_model=64, n_layers=2, n_heads=8, n_kv_heads=8, head_dim=8,
        d_mlp=128, max_positions=64, norm="layernorm", norm_eps=1e-5, activation="gelu_new",
        gated_mlp=False, positions="learned", qkv_bias=True, attn_out_bias=True, mlp_bias=True,
        tie_embeddings=True,
    ),
}  # fmt: skip

for name, config in CONFIGS.items():
    params = layout.init_params(config, seed=1, scale=0.2)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, size=(4, 12))
    reference = np.asarray(forward(params, config, ids).logits)
    for shape in ({"data": 1, "model": 8}, {"data": 2, "model": 4}):
        mesh = sharding.make_mesh(shape)
        placed = sharding.shard(params, config, mesh)
        kernel = placed["layers"]["mlp"]["out"]["kernel"]
        if kernel.sharding.is_fully_replicated or len(kernel.sharding.device_set) != 8:
            sys.exit(f"{name} {shape}: mlp/out/kernel is not distributed: {kernel.sharding}")
        shard_shape = kernel.sharding.shard_shape(kernel.shape)
        if shard_shape[1] != config.d_mlp // shape["model"]:
            sys.exit(f"{name} {shape}: mlp/out/kernel shards are {shard_shape}")
        batch = jax.device_put(ids, sharding.data_sharding(mesh))
        with jax.set_mesh(mesh):
            logits = np.asarray(forward(placed, config, batch).logits)
            tokens = generate(placed, config, ids, max_new_tokens=4)
        err = float(np.abs(logits - reference).max())
        if err > 1e-5:
            sys.exit(f"{name} {shape}: sharded logits differ by {err}")
        if not (tokens == generate(params, config, ids, max_new_tokens=4)).all():
            sys.exit(f"{name} {shape}: sharded generation differs")
        print(f"{name} mesh={shape}: max |diff| {err:.2e}, mlp/out shard {shard_shape}")

try:
    sharding.shard(
        layout.init_params(CONFIGS["llama"]), CONFIGS["llama"].replace(vocab_size=100), sharding.make_mesh()
    )
except ValueError as err:
    print("non-divisible:", err)
else:
    sys.exit("sharding a vocabulary of 100 over 8 devices should fail")
print("OK")
