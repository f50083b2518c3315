"""Fine-tuning baselines FT and FT-L (docs/methods.md §11; Meng et al. 2022 §4 baselines).

FT: Adam (lr 5e-4) on the output projection `W_out` of one MLP layer, at most 25 steps, stopping once
the target's mean NLL on the rewrite prompt is below 0.03. FT-L: the same with the change clamped after
every step to `‖ΔW‖∞ ≤ 5e-4` (the reference's norm constraint). The layer defaults to ROME's layer for
the model (the papers fine-tune the layer they compare against; any layer can be given).

The change is dense; it is returned as a `Delta` whose factors reproduce it exactly
(`left = ΔWᵀ [D, F]`, `right = I [D, D]`), so FT edits join the journal and revert like the others.
As in target optimisation, layers below the tuned one are run once; the jitted loop starts at it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxedit.core import decoder
from jaxedit.core.config import ModelConfig
from jaxedit.core.layout import Params
from jaxedit.edit.checks import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check_fields
from jaxedit.edit.delta import Delta
from jaxedit.edit.precision import working_params
from jaxedit.edit.requests import Request, as_request
from jaxedit.edit.rome import default_layer
from jaxedit.edit.targets import build_batch
from jaxedit.errors import InputError, NumericsError
from jaxedit.io.loading import Model


@dataclasses.dataclass(frozen=True)
class FinetuneHparams:
    """`limit=None`: FT; a number: FT-L with `‖ΔW‖∞ ≤ limit`."""

    layer: int | None = None
    steps: int = 25
    lr: float = 5e-4
    nll_stop: float = 0.03
    limit: float | None = None

    def __post_init__(self) -> None:
        check_fields(
            self,
            {
                "layer": NON_NEGATIVE,
                "steps": AT_LEAST_ONE,
                "lr": POSITIVE,
                "nll_stop": NON_NEGATIVE,
                "limit": POSITIVE,
            },
        )


FT = FinetuneHparams()
FT_L = FinetuneHparams(limit=5e-4)


@functools.partial(jax.jit, static_argnames=("config", "layer", "hp"))
def _finetune(
    params: Params,
    config: ModelConfig,
    layer: int,
    hp: FinetuneHparams,
    ids: jax.Array,
    mask: jax.Array,
    read_pos: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    rows_used: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    x, _, rotary, causal = decoder.prepare(config, params, ids, mask)
    x, _ = decoder.run_layers(config, jax.tree.map(lambda a: a[:layer], params["layers"]), x, rotary, causal)
    x = jax.lax.stop_gradient(x)
    p_layer = jax.tree.map(lambda a: a[layer], params["layers"])
    above = jax.tree.map(lambda a: a[layer + 1 :], params["layers"])
    rows = jnp.arange(ids.shape[0])

    def nll(change: jax.Array) -> jax.Array:
        kernel = p_layer["mlp"]["out"]["kernel"] + change.astype(p_layer["mlp"]["out"]["kernel"].dtype)
        tuned = {**p_layer, "mlp": {**p_layer["mlp"], "out": {**p_layer["mlp"]["out"], "kernel": kernel}}}
        out = decoder.block(config, tuned, x, rotary, causal, {})
        h, _ = decoder.run_layers(config, above, out.resid, rotary, causal)
        logp = jax.nn.log_softmax(decoder.unembed(config, params, h[rows[:, None], read_pos]), axis=-1)
        picked = jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
        per_row = -(picked * weights).sum(-1)
        return (per_row * rows_used).sum() / rows_used.sum()

    optimiser = optax.adam(hp.lr)
    zero = jnp.zeros_like(p_layer["mlp"]["out"]["kernel"], jnp.float32)
    grad_fn = jax.value_and_grad(nll)

    def cond(carry):
        step, _, _, loss = carry
        return (step < hp.steps) & (loss >= hp.nll_stop)

    def body(carry):
        step, change, state, _ = carry
        loss, grad = grad_fn(change)
        updates, state = optimiser.update(grad, state, change)
        moved = optax.apply_updates(change, updates)
        if hp.limit is not None:
            moved = jnp.clip(moved, -hp.limit, hp.limit)
        change = jnp.where(loss >= hp.nll_stop, moved, change)
        return step + 1, change, state, loss

    step, change, _, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), zero, optimiser.init(zero), jnp.float32(jnp.inf))
    )
    return change, nll(change), step


def finetune(model: Model, request: Request | dict, hp: FinetuneHparams = FT) -> Delta:
    """The FT (or FT-L) delta for one request on `model`."""
    request = as_request(request)
    layer = default_layer(model) if hp.layer is None else hp.layer
    if not 0 <= layer < model.config.n_layers:
        raise InputError(f"layer must lie in [0, {model.config.n_layers}), got {layer}")
    batch = build_batch(model, [request], ["{}"], "{}")
    used = (~batch.is_kl).astype(np.float32)
    change, final_nll, steps = _finetune(
        working_params(model), model.config, layer, hp, jnp.asarray(batch.ids), jnp.asarray(batch.mask),
        jnp.asarray(batch.read_pos), jnp.asarray(batch.labels), jnp.asarray(batch.weights), jnp.asarray(used),
    )  # fmt: skip
    change = np.asarray(change, np.float32)  # [F, D]
    if not np.isfinite(change).all():
        raise NumericsError("fine-tuning produced non-finite weights")
    d_model = change.shape[1]
    method = "ft" if hp.limit is None else "ft-l"
    info = {
        "layer": layer,
        "nll": float(final_nll),
        "steps": int(steps),
        "max_abs_change": float(np.abs(change).max()),
    }
    return Delta(
        layers=(layer,), left=change.T[None], right=np.eye(d_model, dtype=np.float32)[None], method=method,
        requests=(request.to_dict(),), info=info,
    )  # fmt: skip
