"""The decoder: embed -> scan(block) -> final norm -> unembed, with taps and interventions.

One block function serves GPT-2, GPT-J, GPT-NeoX and Llama; `ModelConfig` switches choose the norm,
activation, positions, residual wiring and biases (docs/methods.md §0 conventions).

Shape letters: B batch, T query tokens, S key positions, L layers, D residual width, H query heads,
K key/value heads, G = H / K heads per group, E head width, F MLP width, V vocabulary, R rotary width.

Per layer l (sequential): `a = attn(ln1(x))`, `m = mlp(ln2(x + a))`, `x' = x + a + m`.
Per layer l (parallel):   `a = attn(ln1(x))`, `m = mlp(ln2(x))` (`ln1(x)` when the norm is shared).

Taps (request any subset through `taps=`; per-layer taps come back as `[B, L, T, W]`):
  `embed` token embeddings `[B, T, D]` (before learned positions are added, the noise site of §1);
  `resid_pre` layer input; `attn_out` attention output; `mlp_in` normed MLP input;
  `mlp_key` input of the MLP output projection (`[.., F]`); `mlp_out` MLP output; `resid_post` output.
A tap records the value after any intervention at that site, i.e. what actually flowed.

Params may carry, under `MLP_EXTRA`, a term added to every layer's MLP output (an `MLPExtra`): the
editing layer's key-value neurons (iReVa, `jaxedit.edit.gate`) ride there, so the decoder knows the hook
and not the method.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxedit.core import interventions as iv
from jaxedit.core.config import ModelConfig
from jaxedit.core.layout import Params
from jaxedit.errors import InputError

TAPS: tuple[str, ...] = ("embed", *iv.LAYER_SITES)


class Output(struct.PyTreeNode):
    """Result of `forward`.

    Attributes:
      logits: `[B, T, V]` float32 next-token logits.
      taps: requested states; `embed` is `[B, T, D]`, per-layer taps `[B, L, T, W]`.
    """

    logits: jax.Array
    taps: dict[str, jax.Array]


# ----------------------------------------------------------------------------- pieces of a block


def norm(config: ModelConfig, p: Params, x: jax.Array) -> jax.Array:
    """LayerNorm or RMSNorm over the last axis, computed in float32, returned in `x.dtype`."""
    x32 = x.astype(jnp.float32)
    if config.norm == "rmsnorm":
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + config.norm_eps)
        return (p["scale"].astype(jnp.float32) * y).astype(x.dtype)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + config.norm_eps)
    return (y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)).astype(x.dtype)


def activation(name: str, x: jax.Array) -> jax.Array:
    """The MLP nonlinearity named as in Hugging Face configs."""
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name in ("silu", "swish"):
        return jax.nn.silu(x)
    if name == "relu":
        return jax.nn.relu(x)
    raise InputError(f"unsupported activation {name!r}")


def rotary_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies `[R/2]`, with `linear` or `llama3` rope scaling applied when configured."""
    r = config.rotary_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, r, 2, dtype=np.float64) / r))
    scaling = config.rope_scaling_dict
    if not scaling:
        return inv_freq.astype(np.float32)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = np.where(medium, smoothed, scaled)
    elif kind != "default":
        raise InputError(f"unsupported rope scaling {kind!r}")
    return inv_freq.astype(np.float32)


def rotary_tables(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables `[B, T, R]` laid out for the config's rotary style."""
    angles = positions[..., None].astype(jnp.float32) * rotary_inv_freq(config)  # [B, T, R/2]
    if config.rotary_style == "interleaved":
        angles = jnp.repeat(angles, 2, axis=-1)  # [B, T, R]: f0 f0 f1 f1 ...
    else:
        angles = jnp.concatenate([angles, angles], axis=-1)  # [B, T, R]: f0 f1 ... f0 f1 ...
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(config: ModelConfig, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate the first R dims of every head of `x` `[B, T, N, E]`."""
    r = config.rotary_dim
    rot, rest = x[..., :r].astype(jnp.float32), x[..., r:]
    if config.rotary_style == "interleaved":
        pairs = rot.reshape(*rot.shape[:-1], r // 2, 2)
        turned = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(rot.shape)
    else:
        half = r // 2
        turned = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    rotated = rot * cos[:, :, None, :] + turned * sin[:, :, None, :]
    return jnp.concatenate([rotated.astype(x.dtype), rest], axis=-1)


def linear(p: Params, x: jax.Array) -> jax.Array:
    """`x @ kernel + bias`; kernels are stored `[in, out]`."""
    y = x @ p["kernel"]
    return y + p["bias"] if "bias" in p else y


def project_queries(
    config: ModelConfig, p: Params, x: jax.Array, rotary: tuple[jax.Array, jax.Array] | None
) -> jax.Array:
    """Queries `[B, T, H, E]` of normed input `x` `[B, T, D]`, rotated (tables `[B, T, R]`)."""
    q = linear(p["q"], x).reshape(*x.shape[:-1], config.n_heads, config.head_dim)
    return q if rotary is None else apply_rotary(config, q, *rotary)


def project_keys_values(
    config: ModelConfig, p: Params, x: jax.Array, rotary: tuple[jax.Array, jax.Array] | None
) -> tuple[jax.Array, jax.Array]:
    """Keys (rotated) and values `[B, T, K, E]` of normed input `x` `[B, T, D]`."""
    shape = (*x.shape[:-1], config.n_kv_heads, config.head_dim)
    k = linear(p["k"], x).reshape(shape)
    v = linear(p["v"], x).reshape(shape)
    return (k if rotary is None else apply_rotary(config, k, *rotary)), v


def project_qkv(
    config: ModelConfig, p: Params, x: jax.Array, rotary: tuple[jax.Array, jax.Array] | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Queries `[B, T, H, E]`, keys and values `[B, T, K, E]` of normed input `x` `[B, T, D]`."""
    return project_queries(config, p, x, rotary), *project_keys_values(config, p, x, rotary)


def attend(config: ModelConfig, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention of `q` `[B, T, H, E]` over `k`, `v` `[B, S, K, E]`; `mask` `[B, T, S]`.

    Returns the concatenated heads `[B, T, H*E]` (before the output projection).
    """
    c = config
    b, t = q.shape[:2]
    groups = c.n_heads // c.n_kv_heads
    q = q.reshape(b, t, c.n_kv_heads, groups, c.head_dim)  # [B, T, K, G, E]
    scores = jnp.einsum("btkge,bske->bkgts", q, k, preferred_element_type=jnp.float32)  # [B,K,G,T,S]
    scores = scores / math.sqrt(c.head_dim)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bske->btkge", weights, v).reshape(b, t, c.n_heads * c.head_dim)


def attention_heads(
    config: ModelConfig,
    p: Params,
    x: jax.Array,
    rotary: tuple[jax.Array, jax.Array] | None,
    mask: jax.Array,
    cache: tuple[jax.Array, jax.Array] | None = None,
    cache_index: jax.Array | None = None,
    cache_layer: jax.Array | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Multi-head (grouped-query) causal attention up to the concatenated heads `[B, T, H*E]` (the input
    of the output projection).

    Args:
      x: normed input `[B, T, D]`.
      rotary: cos/sin tables `[B, T, R]` for rotary models, else None.
      mask: `[B, T, S]` true where query t may attend to key s.
      cache: key/value cache `([B, S, K, E], [B, S, K, E])`; the new keys/values are written at
        `cache_index` and attention runs over the whole cache. Without a cache, S = T.
      cache_layer: when given, `cache` holds every layer (`[L, B, S, K, E]` each) and this layer's slot
        is `cache_layer`: the new keys / values are written into the stacked arrays directly, so a
        cache carried through a layer loop is updated in place instead of copied layer by layer.

    Returns:
      The heads and the updated cache (None without one).
    """
    q, k, v = project_qkv(config, p, x, rotary)
    if cache is not None and cache_layer is not None:
        at = (cache_layer, 0, cache_index, 0, 0)
        cache = tuple(
            jax.lax.dynamic_update_slice(c, new.astype(c.dtype)[None], at)
            for c, new in zip(cache, (k, v), strict=True)
        )
        k, v = cache[0][cache_layer], cache[1][cache_layer]
    elif cache is not None:
        k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, cache_index, 0, 0))
        v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, cache_index, 0, 0))
        cache = (k, v)
    return attend(config, q, k, v, mask), cache


def mlp_key(config: ModelConfig, p: Params, x: jax.Array) -> jax.Array:
    """The MLP key `[B, T, F]`: `act(W_in x)`, or `act(W_gate x) * (W_in x)` for gated MLPs (§0)."""
    if config.gated_mlp:
        return activation(config.activation, linear(p["gate"], x)) * linear(p["in"], x)
    return activation(config.activation, linear(p["in"], x))


class BlockOut(struct.PyTreeNode):
    """What one block hands back to the scan."""

    resid: jax.Array
    taps: dict[str, jax.Array]
    cache: tuple[jax.Array, jax.Array] | None


def mlp_input(config: ModelConfig, p: Params, x: jax.Array, attn: jax.Array) -> jax.Array:
    """The normed MLP input for block input `x` and attention output `attn` (the residual wiring of the
    module docstring: `ln2(x + a)` sequential, `ln2(x)` or the shared `ln1(x)` parallel)."""
    if config.parallel_residual:
        return norm(config, p["ln1"] if config.shared_block_norm else p["ln2"], x)
    return norm(config, p["ln2"], x + attn)


MLP_EXTRA = "mlp_extra"  # the params entry holding an `MLPExtra`


class MLPExtra(Protocol):
    """A term added to the MLP output of each layer (part of the MLP: the `mlp_out` tap includes it)."""

    def __call__(self, layer: jax.Array, mlp_in: jax.Array, last: jax.Array) -> jax.Array:
        """What is added at traced layer index `layer` for MLP inputs `[B, T, D]` whose last real tokens
        are at `last` `[B]` (`last_positions`): `[B, T, D]`."""
        ...


def mlp_extra_at(
    params: Params, layer: jax.Array, last: jax.Array
) -> Callable[[jax.Array], jax.Array] | None:
    """The `mlp_extra=` of `block` for `layer`: params' `MLPExtra` bound to the layer, or None."""
    extra: MLPExtra | None = params.get(MLP_EXTRA)
    return None if extra is None else functools.partial(extra, layer, last=last)


def block(
    config: ModelConfig,
    p: Params,
    x: jax.Array,
    rotary: tuple[jax.Array, jax.Array] | None,
    mask: jax.Array,
    edits: iv.Interventions,
    taps: Sequence[str] = (),
    cache: tuple[jax.Array, jax.Array] | None = None,
    cache_index: jax.Array | None = None,
    mlp_extra: Callable[[jax.Array], jax.Array] | None = None,
    cache_layer: jax.Array | None = None,
    mlp_delta: Callable[[jax.Array], jax.Array] | None = None,
) -> BlockOut:
    """One transformer block on `x` `[B, T, D]` with this layer's params and intervention slices.

    `mlp_extra` maps the MLP input to a term added to the MLP output (`mlp_extra_at`); `mlp_delta` maps
    the MLP key to one (per-row weight edits, `jaxedit.core.row_deltas`)."""
    states: dict[str, jax.Array] = {}

    def site(name: str, value: jax.Array) -> jax.Array:
        value = iv.apply_edit(value, edits.get(name))
        if name in taps:
            states[name] = value
        return value

    x = site("resid_pre", x)
    heads, cache = attention_heads(
        config, p["attn"], norm(config, p["ln1"], x), rotary, mask, cache, cache_index, cache_layer
    )
    heads = site("attn_heads", heads)
    a = site("attn_out", linear(p["attn"]["o"], heads))
    m_in = site("mlp_in", mlp_input(config, p, x, a))
    key = site("mlp_key", mlp_key(config, p["mlp"], m_in))
    m = linear(p["mlp"]["out"], key)
    if mlp_delta is not None:
        m = m + mlp_delta(key)
    if mlp_extra is not None:
        m = m + mlp_extra(m_in)
    m = site("mlp_out", m)
    out = site("resid_post", x + a + m)
    return BlockOut(resid=out, taps=states, cache=cache)


def run_layers(
    config: ModelConfig,
    layers: Params,
    x: jax.Array,
    rotary: tuple[jax.Array, jax.Array] | None,
    mask: jax.Array,
    taps: Sequence[str] = (),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Blocks with stacked params `layers` (any contiguous range of the model's) on `x` `[B, T, D]`.

    Returns the output stream and the requested taps stacked `[n, B, T, W]`. For computations that start
    or stop inside the model (statistics up to a layer, target optimisation from a layer on).
    """

    def step(x: jax.Array, p: Params) -> tuple[jax.Array, dict]:
        out = block(config, p, x, rotary, mask, {}, tuple(taps))
        return out.resid, out.taps

    return jax.lax.scan(step, x, layers)


def embed_tokens(params: Params, input_ids: jax.Array) -> jax.Array:
    """Token embeddings `[B, T, D]`."""
    return jnp.take(params["embed"]["tokens"], input_ids, axis=0)


def unembed(config: ModelConfig, params: Params, x: jax.Array) -> jax.Array:
    """Final norm and unembedding: `[.., D]` residual -> `[.., V]` float32 logits."""
    h = norm(config, params["final_norm"], x)
    if config.tie_embeddings:
        logits = jnp.einsum("...d,vd->...v", h, params["embed"]["tokens"], preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum(
            "...d,dv->...v", h, params["unembed"]["kernel"], preferred_element_type=jnp.float32
        )
    if "unembed" in params and "bias" in params["unembed"]:
        logits = logits + params["unembed"]["bias"].astype(jnp.float32)
    return logits


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Position ids `[B, T]` counting only real tokens, so left padding does not shift positions."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def last_positions(attention_mask: jax.Array) -> jax.Array:
    """Index of the last real token of each row `[B]` (left or right padding)."""
    t = attention_mask.shape[-1]
    return (t - 1 - jnp.argmax(jnp.flip(attention_mask.astype(bool), -1), axis=-1)).astype(jnp.int32)


class Prepared(NamedTuple):
    """What a forward from layer 0 needs, from token ids and their mask (`prepare`)."""

    x: jax.Array  # layer 0's input [B, T, D]
    positions: jax.Array  # [B, T], counting real tokens only
    rotary: tuple[jax.Array, jax.Array] | None
    causal: jax.Array  # [B, T, T]


def attention_inputs(config: ModelConfig, attention_mask: jax.Array) -> tuple[tuple | None, jax.Array]:
    """The rotary tables and the causal mask of a padded batch: what every block needs besides `x`."""
    return rotary_for(config, positions_from_mask(attention_mask)), causal_mask(attention_mask)


def prepare(
    config: ModelConfig,
    params: Params,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    tokens: jax.Array | None = None,
) -> Prepared:
    """Layer 0's input, positions, rotary tables and causal mask: the setup of every forward, whole or
    partial. `tokens`: token embeddings to use instead of looking up `input_ids` (an intervened embedding)."""
    positions = positions_from_mask(attention_mask)
    tokens = embed_tokens(params, input_ids) if tokens is None else tokens
    x = residual_input(config, params, tokens, positions)
    return Prepared(x, positions, rotary_for(config, positions), causal_mask(attention_mask))


def causal_mask(attention_mask: jax.Array) -> jax.Array:
    """`[B, T, T]` true where query t may see key s: s <= t and s is a real token."""
    t = attention_mask.shape[-1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    return causal[None] & attention_mask.astype(bool)[:, None, :]


def residual_input(config: ModelConfig, params: Params, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    """Input of layer 0 `[B, T, D]` from token embeddings `tokens` (adds learned positions)."""
    if config.positions == "learned":
        return tokens + jnp.take(params["embed"]["positions"], positions, axis=0)
    return tokens


def rotary_for(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array] | None:
    return rotary_tables(config, positions) if config.positions == "rotary" else None


# ----------------------------------------------------------------------------- the forward pass


def site_widths(config: ModelConfig) -> dict[str, int]:
    """Last-axis width of every intervention site."""
    widths = {site: config.d_model for site in iv.SITES}
    widths["mlp_key"] = config.d_mlp
    widths["attn_heads"] = config.n_heads * config.head_dim
    return widths


@functools.partial(jax.jit, static_argnames=("config", "taps"))
def _forward(
    params: Params,
    config: ModelConfig,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    taps: tuple[str, ...],
    interventions: iv.Interventions,
    read: jax.Array | None = None,
) -> Output:
    """Logits at every position, or at positions `read` `[B, M]` only, and the recorded taps."""
    tokens = iv.apply_edit(embed_tokens(params, input_ids), interventions.get("embed"))
    x, _, rotary, mask = prepare(config, params, input_ids, attention_mask, tokens)
    layer_taps = tuple(t for t in taps if t != "embed")
    last = last_positions(attention_mask)

    def step(x: jax.Array, layer: tuple[Params, iv.Interventions, jax.Array]) -> tuple[jax.Array, dict]:
        p, edits, index = layer
        extra = mlp_extra_at(params, index, last)
        out = block(config, p, x, rotary, mask, edits, layer_taps, mlp_extra=extra)
        return out.resid, out.taps

    xs = (params["layers"], iv.layer_major(interventions), jnp.arange(config.n_layers))
    x, stacked = jax.lax.scan(step, x, xs)
    recorded = {name: jnp.moveaxis(value, 0, 1) for name, value in stacked.items()}  # [B, L, T, W]
    if "embed" in taps:
        recorded["embed"] = tokens
    if read is not None:
        x = x[jnp.arange(x.shape[0])[:, None], read]
    return Output(logits=unembed(config, params, x), taps=recorded)


def logits_at(
    params: Params, config: ModelConfig, input_ids: jax.Array, attention_mask: jax.Array, read: jax.Array
) -> jax.Array:
    """Next-token logits `[B, M, V]` at positions `read` `[B, M]` only: what scoring needs, without
    unembedding every position (the vocabulary projection is a fifth of a small model's work)."""
    input_ids = jnp.asarray(input_ids)
    check_tokens(config, input_ids)
    read = jnp.asarray(read, jnp.int32)
    if read.ndim != 2 or read.shape[0] != input_ids.shape[0]:
        raise InputError(f"read positions must be [batch, M], got shape {tuple(read.shape)}")
    return _forward(params, config, input_ids, jnp.asarray(attention_mask), (), {}, read).logits


def _is_concrete(x: object) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_tokens(config: ModelConfig, input_ids: jax.Array) -> None:
    """Raise a clear error for a wrong rank, a sequence longer than the context, or ids out of range."""
    if input_ids.ndim != 2:
        raise InputError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise InputError("input_ids is empty: nothing to run")
    if input_ids.shape[1] > config.max_positions:
        raise InputError(
            f"sequence of {input_ids.shape[1]} tokens is longer than the model's context "
            f"of {config.max_positions} tokens"
        )
    if _is_concrete(input_ids):
        ids = np.asarray(input_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"input_ids must be integers, got {ids.dtype}")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= config.vocab_size:
            raise InputError(
                f"token id out of range: ids span [{low}, {high}] but the vocabulary has "
                f"{config.vocab_size} entries"
            )


def forward(
    params: Params,
    config: ModelConfig,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    taps: Sequence[str] = (),
    interventions: iv.Interventions | None = None,
) -> Output:
    """Run the decoder.

    Pure: `params` are never modified. Jitted once per (config, shapes, taps, intervention structure);
    usable inside `jit` and `vmap`.

    Args:
      params: the params pytree (`jaxedit.core.layout`).
      config: the model's `ModelConfig` (static).
      input_ids: `[B, T]` token ids.
      attention_mask: `[B, T]` 1 for real tokens, 0 for padding (left or right); default all ones.
      taps: names from `TAPS` to return in `Output.taps`.
      interventions: `{site: SiteEdit}` (see `jaxedit.core.interventions`).

    Returns:
      `Output` with `[B, T, V]` float32 logits and the requested taps.
    """
    input_ids = jnp.asarray(input_ids) if not isinstance(input_ids, jax.Array) else input_ids
    check_tokens(config, input_ids)
    unknown = set(taps) - set(TAPS)
    if unknown:
        raise InputError(f"unknown taps {sorted(unknown)}; taps are {', '.join(TAPS)}")
    b, t = input_ids.shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), jnp.int32)
    attention_mask = jnp.asarray(attention_mask)
    if attention_mask.shape != (b, t):
        raise InputError(f"attention_mask has shape {attention_mask.shape}, expected {(b, t)}")
    edits = iv.validate(interventions, b, config.n_layers, t, site_widths(config))
    return _forward(params, config, input_ids, attention_mask, tuple(taps), edits)
