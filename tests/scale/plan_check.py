"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_plan.py).

`python tests/scale/plan_check.py PRESET...`: plans each preset at bfloat16 on an 8-device mesh and checks the
parameter count against the published one, the per-device parameter bytes against total / 8 and that
every program compiled; then plans a small GPT-J-shaped model and runs the compiled forward on real
sharded params, which must give the unsharded logits. Exits non-zero with a message on any failure.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from jaxedit import forward
from jaxedit.core import layout, sharding
from jaxedit.scale import presets
from jaxedit.scale.plan import PROGRAMS, plan

assert jax.device_count() == 8, jax.devices()
mesh = sharding.make_mesh({"data": 1, "model": 8})

for name in sys.argv[1:]:
    config = presets.config(name, dtype="bfloat16")
    result = plan(config, mesh, name=name, edits=1000, progress=None).to_dict()
    published = presets.PUBLISHED_PARAMS[name]
    assert abs(result["params"] / published - 1) < 0.01, (name, result["params"], published)
    ideal = 2 * result["params"] / 8
    assert abs(result["per_device_param_bytes"] / ideal - 1) < 0.15, (name, result["per_device_param_bytes"])
    for program in PROGRAMS:
        entry = result["programs"][program]
        assert entry["per_device_peak_bytes"] > result["per_device_param_bytes"] * 0.5, (name, program, entry)
        assert entry["flops"] > 0, (name, program, entry)
    print(name, {k: round(v["per_device_peak_bytes"] / 2**30, 2) for k, v in result["programs"].items()})

# a small model of GPT-J's family and shape rules: the planned forward is the program that runs
small = presets.config(
    "gptj-6b", n_layers=2, d_model=128, n_heads=8, n_kv_heads=8, head_dim=16, rotary_dim=8, d_mlp=512,
    vocab_size=512,
)  # fmt: skip
planned = plan(small, mesh, name="small", programs=("forward",), progress=None).programs["forward"]
params = layout.init_params(small, seed=1, scale=0.2)
ids = np.random.default_rng(0).integers(0, small.vocab_size, (8, 128)).astype(np.int32)
mask = np.ones((8, 128), bool)
sharded = sharding.shard(params, small, mesh)
assert len(sharded["layers"]["mlp"]["out"]["kernel"].sharding.device_set) == 8
got = np.asarray(planned.executables[0](sharded, ids, mask))
want = np.asarray(forward(params, small, ids, mask).logits)
error = float(np.abs(got - want).max())
assert error < 1e-4, f"planned forward differs from the unsharded one by {error}"
print("planned forward == unsharded forward, max |diff|", error)
