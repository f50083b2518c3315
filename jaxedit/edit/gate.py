"""Key-value adaptor neurons in one MLP, gated top-1 at the last input token (docs/methods.md §9, iReVa §4.3).

An edited model carries an `Adaptor` as the decoder's MLP hook (`params[MLP_EXTRA]`, `jaxedit.core.decoder`;
read and set it with `adaptor_of` / `with_adaptor`); the forward pass and cached generation
(`jaxedit.core.generate`) then add, at the MLP output of `adaptor.layer` and only at the last real token of
each row,

    α · v_j · act(s_j − θ),    j = argmax over active neurons t of s_t,    s_t = score(k_t, ĩ),

with `ĩ = normalise(mlp_in)` the (normalised) MLP input of that token (iReVa eq. 7 and 12), when `s_j`
passes the neuron's threshold `max(θ, floor_j)`. The per-neuron `floor` is −∞ (θ alone, the paper's
gate) unless an edit raised it above the scores the neuron reaches on other facts' inputs
(`IrevaHparams.exclusive`): then a withdrawn fact's inputs fall back to the base model instead of to a
neighbouring fact's neuron. A withdrawn fact's neurons are either muted (the default,
`jaxedit.edit.adaptors.withdraw_fact`): they stay in the top-1 and still claim the inputs they won, but
add nothing, so exactly the prompts the fact changed return to the base model; or removed (the paper's
reading, §4.3): they leave the top-1, and a neighbour may win the inputs they claimed.

A row whose best score is below θ gets `act(s_j − θ)` for a negative argument: exactly zero for ReLU, and for GELU / SiLU a small negative multiple of `v_j`. To keep "below
θ, unchanged" exact for every activation, the output is also zeroed where `s_j` does not pass (for ReLU
this changes nothing; for the smooth activations it removes the sub-threshold tail, which iReVa's
"inactive neuron" reading of eq. 6 intends).

All state is fixed-capacity arrays (capacity grown by doubling, `jaxedit.edit.ireva`), so an edited model
jits and batches like the base one; the static fields (layer, normalisation, score, activation) are part
of the pytree's structure, the thresholds are arrays (a θ sweep does not recompile).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxedit.core.decoder import MLP_EXTRA, activation
from jaxedit.core.layout import Params
from jaxedit.errors import InputError

NORMALISATIONS = ("none", "center", "ln", "l2")
SCORES = ("dot", "cosine")


class Adaptor(struct.PyTreeNode):
    """Adaptor neurons of one MLP.

    Attributes:
      keys: `[C, D]` keys `k_t` (compared with the normalised MLP input).
      values: `[C, D]` values `v_t` (added to the MLP output).
      active: `[C]` false for empty slots and removed facts (out of the top-1).
      muted: `[C]` true for the neurons of muted (withdrawn) facts: in the top-1, adding nothing.
      fact: `[C]` int32 number of the fact a neuron belongs to (`-1` for empty slots).
      token: `[C]` int32 index of the answer token the neuron writes (multi-token answers, §9).
      floor: `[C]` a neuron's own lower bound on the score it needs to fire (−inf: θ alone).
      theta: `[]` margin θ; alpha: `[]` scale α.
      center: `[D]` the mean MLP input subtracted by the `center` normalisation (zeros otherwise).
      layer: the layer whose MLP carries the neurons.
      normalise: `none | center | ln | l2`, applied to the MLP input before scoring.
      score: `dot` or `cosine`.
      activation: the gate's nonlinearity (the model's MLP activation, iReVa eq. 6).
    """

    keys: jax.Array
    values: jax.Array
    active: jax.Array
    muted: jax.Array
    fact: jax.Array
    token: jax.Array
    floor: jax.Array
    theta: jax.Array
    alpha: jax.Array
    center: jax.Array
    layer: int = struct.field(pytree_node=False)
    normalise: str = struct.field(pytree_node=False, default="l2")
    score: str = struct.field(pytree_node=False, default="cosine")
    activation: str = struct.field(pytree_node=False, default="gelu")

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[0])

    def __call__(self, layer: jax.Array, mlp_in: jax.Array, last: jax.Array) -> jax.Array:
        """The decoder's MLP hook (`jaxedit.core.decoder.MLPExtra`): `mlp_addition`."""
        return mlp_addition(self, layer, mlp_in, last)


def adaptor_of(params: Params) -> Adaptor | None:
    """The adaptor neurons an edited model's params carry, or None."""
    extra = params.get(MLP_EXTRA)
    return extra if isinstance(extra, Adaptor) else None


def with_adaptor(params: Params, adaptor: Adaptor) -> Params:
    """A copy of `params` carrying `adaptor` as the decoder's MLP hook."""
    return {**params, MLP_EXTRA: adaptor}


def normalise_input(x: jax.Array, mode: str, center: jax.Array | None = None) -> jax.Array:
    """`ĩ` from the MLP input `x` `[..., D]` (docs/methods.md §9 "input normalisation"):

    - `none`: `x`;
    - `center`: `x − μ`, with `μ` the mean MLP input of the layer over sampled text (`center`): iReVa
      §4.2 normalises `i` "so that its mean value is close to 0", which we read as the mean over inputs;
      it removes the direction all inputs share, which otherwise dominates their similarities;
    - `ln`: `x` standardised over its features;
    - `l2`: `x / ‖x‖`.
    """
    x = x.astype(jnp.float32)
    if mode == "none":
        return x
    if mode == "center":
        if center is None:
            raise InputError("the center normalisation needs the mean input `center`")
        return x - center.astype(jnp.float32)
    if mode == "ln":
        centred = x - x.mean(-1, keepdims=True)
        return centred * jax.lax.rsqrt(jnp.mean(centred * centred, -1, keepdims=True) + 1e-6)
    if mode == "l2":
        return x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)
    raise InputError(f"unknown adaptor normalisation {mode!r}; choose from {', '.join(NORMALISATIONS)}")


def key_scores(keys: jax.Array, inputs: jax.Array, score: str) -> jax.Array:
    """`s = score(k, ĩ)` for keys `[C, D]` and normalised inputs `[..., D]`: `[..., C]`."""
    dots = jnp.einsum("...d,cd->...c", inputs, keys.astype(jnp.float32))
    if score == "dot":
        return dots
    if score == "cosine":
        key_norm = jnp.sqrt(jnp.sum(jnp.square(keys.astype(jnp.float32)), -1) + 1e-12)
        input_norm = jnp.sqrt(jnp.sum(inputs * inputs, -1, keepdims=True) + 1e-12)
        return dots / (key_norm * input_norm)
    raise InputError(f"unknown adaptor score {score!r}; choose from {', '.join(SCORES)}")


def matched_scores(keys: jax.Array, inputs: jax.Array, score: str) -> jax.Array:
    """`score(k, ĩ)` of keys and normalised inputs paired elementwise (broadcasting over leading axes)."""
    keys = keys.astype(jnp.float32)
    dots = jnp.sum(keys * inputs, -1)
    if score == "dot":
        return dots
    if score == "cosine":
        return dots * jax.lax.rsqrt(
            (jnp.sum(keys * keys, -1) + 1e-12) * (jnp.sum(inputs * inputs, -1) + 1e-12)
        )
    raise InputError(f"unknown adaptor score {score!r}; choose from {', '.join(SCORES)}")


def top_neuron(adaptor: Adaptor, m_in: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The adaptor on MLP inputs `m_in` `[..., D]` (one per prompt: its last token).

    Returns `(output [..., D], winner [...] int32, best score [...])`; the winner is the neuron with the
    highest score among active ones (`-1` and score `-inf` when none is active), the output is zero
    unless that score exceeds the winner's threshold `max(θ, floor)` and the winner is not muted
    (`writes`).
    """
    scores = key_scores(adaptor.keys, normalise_input(m_in, adaptor.normalise, adaptor.center), adaptor.score)
    scores = jnp.where(adaptor.active, scores, -jnp.inf)
    winner = jnp.argmax(scores, axis=-1)
    best = jnp.take_along_axis(scores, winner[..., None], axis=-1)[..., 0]
    strength = adaptor.alpha * activation(adaptor.activation, best - adaptor.theta)
    strength = jnp.where(writes(adaptor, winner, best), strength, 0.0)
    out = strength[..., None] * jnp.take(adaptor.values, winner, axis=0).astype(jnp.float32)
    winner = jnp.where(jnp.isfinite(best), winner, -1).astype(jnp.int32)
    return out, winner, best


def passes(adaptor: Adaptor, winner: jax.Array, best: jax.Array) -> jax.Array:
    """Whether the winning neuron's score `best` exceeds its threshold `max(θ, floor[winner])`."""
    threshold = jnp.maximum(adaptor.theta, jnp.take(adaptor.floor, jnp.maximum(winner, 0)))
    return best > threshold


def writes(adaptor: Adaptor, winner: jax.Array, best: jax.Array) -> jax.Array:
    """Whether the winning neuron changes the output: it passes its threshold and is not muted."""
    return passes(adaptor, winner, best) & ~jnp.take(adaptor.muted, jnp.maximum(winner, 0))


def mlp_addition(adaptor: Adaptor, layer: jax.Array, m_in: jax.Array, last: jax.Array) -> jax.Array:
    """What the adaptor adds to the MLP output of `layer` (traced index) for inputs `m_in` `[B, T, D]`
    whose last real tokens are `last` `[B]`: zeros except at those tokens of `adaptor.layer`."""

    def added() -> jax.Array:
        rows = jnp.arange(m_in.shape[0])
        out, _, _ = top_neuron(adaptor, m_in[rows, last])
        where = jax.nn.one_hot(last, m_in.shape[1], dtype=jnp.float32)  # [B, T]
        return (where[..., None] * out[:, None, :]).astype(m_in.dtype)

    return jax.lax.cond(layer == adaptor.layer, added, lambda: jnp.zeros_like(m_in))
