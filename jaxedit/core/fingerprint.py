"""A fingerprint of every weight: tells a model from its edits, a re-saved copy and another seed.

`weights_fingerprint(config, params)` hashes every element of every parameter, where the parameters
live (one jitted program over the whole pytree: no copy to the host, sharded or not), together with
the config, the pytree's paths, shapes and dtypes. Each element's bits `x` at flat index `i`, with
`m = fmix(i ^ s0)`, are mixed as `g1 = fmix(x ^ m)` and `g2 = fmix((x + m) ^ s1)`, where `fmix` is
MurmurHash3's 32-bit finaliser (a bijection), and each is summed modulo 2³² per parameter: changing
any one element always changes both sums (for a fixed `i`, each `g` is a bijection of `x`), and a
change of many elements leaves a sum equal with probability about 2⁻³² per lane. It is a fingerprint, not a cryptographic hash:
it tells weights apart, it does not resist someone forging a collision.

`Model.fingerprint` computes it once per model value; edits carry the base model's fingerprint
(`Model.base_fingerprint`), so caches keyed by the unedited weights need no second hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.core.config import ModelConfig
from jaxedit.core.layout import Params

SEEDS = (0x9E3779B9, 0x7F4A7C15)


def _fmix(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _bits(leaf: jax.Array) -> jax.Array:
    """The raw bits of each element as uint32 (8-byte elements as two words on a trailing axis)."""
    size = jnp.dtype(leaf.dtype).itemsize
    if leaf.dtype == jnp.bool_:
        return leaf.astype(jnp.uint32)
    if size == 4:
        return jax.lax.bitcast_convert_type(leaf, jnp.uint32)
    if size in (1, 2):
        unsigned = jnp.uint8 if size == 1 else jnp.uint16
        return jax.lax.bitcast_convert_type(leaf, unsigned).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(leaf, jnp.uint32)  # 8 bytes: [..., 2]


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """Row-major flat index of every element modulo 2³², built from per-axis iotas (no 64-bit range)."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return index


@jax.jit
def _leaf_sums(leaves: list[jax.Array]) -> jax.Array:
    """`[n_leaves, 2]` uint32: per parameter, the sums of `g1` and `g2` over its elements."""
    rows = []
    for leaf in leaves:
        bits = _bits(leaf)
        m = _fmix(_flat_index(bits.shape) ^ jnp.uint32(SEEDS[0]))
        lanes = (_fmix(bits ^ m), _fmix((bits + m) ^ jnp.uint32(SEEDS[1])))
        rows.append(jnp.stack([jnp.sum(g, dtype=jnp.uint32) for g in lanes]))
    return jnp.stack(rows)


def weights_fingerprint(config: ModelConfig, params: Params) -> str:
    """A 16-hex-digit fingerprint of the config and every element of every parameter (see the module
    docstring)."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [jnp.asarray(leaf) for _, leaf in pairs]
    sums = _leaf_sums(leaves)
    if not sums.is_fully_addressable:  # a multi-process run: the small result is replicated everywhere
        sums = sums.addressable_data(0)
    h = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    h.update(str(treedef).encode())  # structure, and static fields of pytree nodes (iReVa's gate)
    for (path, _), leaf in zip(pairs, leaves, strict=True):
        h.update(f"{jax.tree_util.keystr(path)}:{tuple(leaf.shape)}:{leaf.dtype.name};".encode())
    h.update(np.asarray(sums, np.uint32).tobytes())
    return h.hexdigest()[:16]
