"""Compile and run seconds of ROME's target loop alone (`jaxedit.edit.targets.target_loop`) on SmolLM2:
the measurement behind the loop's structure (run it on two commits in alternating fresh processes to
compare them) and behind per-program XLA options.

Builds the batch of one request with the ROME contexts, runs the prepass, then lowers and compiles the
loop (with `--legacy-emitters`: XLA's elemental emitters, `xla_cpu_use_fusion_emitters=False`, for this
program only) and times two warm runs of its 20 Adam steps.

    python tools/target_loop_time.py [--request eiffel|darrieux] [--legacy-emitters]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_report import cpu_name

import jaxedit
from jaxedit.edit import default_layer, targets
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.precision import working_params
from jaxedit.edit.requests import Request

REQUESTS = {
    "eiffel": Request(prompt="{} is located in the city of", subject="The Eiffel Tower", target="Rome"),
    "darrieux": Request(prompt="The mother tongue of {} is", subject="Danielle Darrieux", target="English"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--request", choices=sorted(REQUESTS), default="eiffel")
    parser.add_argument("--legacy-emitters", action="store_true")
    args = parser.parse_args()
    options = {"xla_cpu_use_fusion_emitters": False} if args.legacy_emitters else None
    model = jaxedit.load_model("smollm2")
    layer, hp = default_layer(model), targets.TargetHparams()
    batch = targets.build_batch(model, [REQUESTS[args.request]], context_templates(model), hp.kl_prompt)
    arrays = targets.Batch(*(jnp.asarray(a) for a in batch))
    window = targets.suffix_window(batch, multiple=1)
    params = working_params(model)
    first_reads = arrays._replace(read_pos=arrays.read_pos[:, :1], labels=None, weights=None)
    pre = jax.block_until_ready(targets.target_prepass(params, model.config, layer, hp, 1, first_reads))
    start = time.perf_counter()
    loop = targets.target_loop.lower(params, model.config, layer, hp, window, pre, arrays).compile(options)
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(loop(params, pre, arrays))
    runs = []
    for _ in range(2):
        start = time.perf_counter()
        out = jax.block_until_ready(loop(params, pre, arrays))
        runs.append(time.perf_counter() - start)
    steps = int(np.asarray(out[4])[0])
    print(
        f"cpu: {cpu_name()}; SmolLM2-135M (float32), layer {layer}, rows {arrays.ids.shape[0]}, window {window}"
    )
    print(
        f"target_loop ({'legacy emitters' if args.legacy_emitters else 'default'}): compile {compile_s:.2f} s, "
        f"run {min(runs):.2f} s for {steps} steps ({min(runs) / steps * 1e3:.0f} ms per step)"
    )


if __name__ == "__main__":
    main()
