"""Interventions on residual sites as static-shape values (DESIGN.md, principle 2).

An intervention at a site is a `SiteEdit`: where `mask` is true the site's value is replaced by
`values`, then `delta` is added everywhere (zeros where nothing is meant to change). All three are
plain arrays with fixed shapes, so a forward pass with interventions jits once per shape and `vmap`s
over masks: that is how a tracing grid becomes one program.

Sites and shapes (B batch, L layers, T tokens, D residual width, F MLP width)::

    embed       token embeddings (plus learned positions) [B, T, D]    mask [B, T]
    resid_pre   input of layer l                          [B, L, T, D] mask [B, L, T]
    attn_out    attention output added to the residual    [B, L, T, D]
    mlp_in      the (normed) input of the MLP             [B, L, T, D]
    mlp_key     input of the MLP output projection        [B, L, T, F]  (docs/methods.md §0 "key")
    mlp_out     MLP output added to the residual          [B, L, T, D]  (docs/methods.md §0 "value")
    resid_post  output of layer l                         [B, L, T, D]

A leading batch axis may be left out; it then applies to every prompt of the batch.

The three constructors name the three uses: `replace` (restore clean states in causal tracing,
docs/methods.md §1), `add` (a delta, e.g. the target vector δ of §4) and `freeze` (pin a sublayer to values
from another run: severing in §1). `freeze` and `replace` are the same operation; the name says why.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxedit.errors import InputError

LAYER_SITES: tuple[str, ...] = (
    "resid_pre", "attn_heads", "attn_out", "mlp_in", "mlp_key", "mlp_out", "resid_post",
)  # fmt: skip
SITES: tuple[str, ...] = ("embed", *LAYER_SITES)


class SiteEdit(NamedTuple):
    """Replace-then-add at one site. Any field may be None (no replacement / no delta)."""

    mask: jax.Array | None = None
    values: jax.Array | None = None
    delta: jax.Array | None = None


Interventions = dict[str, SiteEdit]


def replace(mask: jax.Array, values: jax.Array) -> SiteEdit:
    """Overwrite the site with `values` where `mask` is true."""
    return SiteEdit(mask=jnp.asarray(mask, bool), values=jnp.asarray(values))


def freeze(mask: jax.Array, values: jax.Array) -> SiteEdit:
    """Pin the site to `values` (typically from another run) where `mask` is true: severing."""
    return replace(mask, values)


def add(delta: jax.Array) -> SiteEdit:
    """Add `delta` to the site (zeros where nothing changes)."""
    return SiteEdit(delta=jnp.asarray(delta))


def apply_edit(x: jax.Array, edit: SiteEdit | None) -> jax.Array:
    """Apply one site's edit to that site's activations `x` (`[B, T, W]`, edit arrays already sliced)."""
    if edit is None:
        return x
    if edit.mask is not None:
        x = jnp.where(edit.mask[..., None], edit.values.astype(x.dtype), x)
    if edit.delta is not None:
        x = x + edit.delta.astype(x.dtype)
    return x


def _with_batch(a: jax.Array | None, batch: int, unbatched_ndim: int) -> jax.Array | None:
    if a is None:
        return None
    if a.ndim == unbatched_ndim:
        a = a[None]
    if a.ndim != unbatched_ndim + 1:
        raise InputError(f"intervention array of shape {a.shape} has the wrong number of axes")
    return jnp.broadcast_to(a, (batch, *a.shape[1:]))


def validate(
    interventions: Interventions | None,
    batch: int,
    n_layers: int,
    length: int,
    widths: dict[str, int],
) -> Interventions:
    """Check sites and shapes; add the batch axis where it was left out."""
    if not interventions:
        return {}
    out: Interventions = {}
    for site, edit in interventions.items():
        if site not in SITES:
            raise InputError(f"unknown intervention site {site!r}; sites are {', '.join(SITES)}")
        if not isinstance(edit, SiteEdit):
            raise TypeError(f"intervention at {site!r} must be a SiteEdit, got {type(edit).__name__}")
        if (edit.mask is None) != (edit.values is None):
            raise InputError(f"intervention at {site!r}: mask and values go together")
        lead = (length,) if site == "embed" else (n_layers, length)
        width = widths[site]
        mask = _with_batch(edit.mask, batch, len(lead))
        values = _with_batch(edit.values, batch, len(lead) + 1)
        delta = _with_batch(edit.delta, batch, len(lead) + 1)
        for name, arr, shape in (
            ("mask", mask, (batch, *lead)),
            ("values", values, (batch, *lead, width)),
            ("delta", delta, (batch, *lead, width)),
        ):
            if arr is not None and tuple(arr.shape) != shape:
                raise InputError(
                    f"intervention {name} at {site!r} has shape {tuple(arr.shape)}, expected {shape}"
                )
        out[site] = SiteEdit(mask, values, delta)
    return out


def layer_major(interventions: Interventions) -> Interventions:
    """Per-layer sites with the layer axis first, ready to be scanned over."""

    def move(a: jax.Array | None) -> jax.Array | None:
        return None if a is None else jnp.moveaxis(a, 1, 0)

    return {
        site: SiteEdit(*(move(a) for a in edit)) for site, edit in interventions.items() if site != "embed"
    }
