"""The precision edits are computed in.

float16 holds numbers up to 65,504: the residual stream, the target optimisation's logits and the
second moments of MLP keys of real models pass that, and an edit computed there can report a low loss
while the model it writes is broken (docs/methods.md §4-§6 assume float32 arithmetic). So every editing
computation (statistics, target optimisation, MEMIT's layer walk, iReVa's reads, fine-tuning) runs on
`working_params(model)`: float16 weights widened to float32, bfloat16 (float32's range) and float32
weights as they are. The resulting `Delta` is added to the model's own weights in their dtype, and
`jaxedit.edit.health.check_edit` looks at the edited model in that dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxedit.core.layout import Params
from jaxedit.io.loading import Model


def working_params(model: Model) -> Params:
    """`model.params` with float16 arrays cast to float32 (a copy only when there are any)."""
    leaves = jax.tree.leaves(model.params)
    if not any(getattr(leaf, "dtype", None) == jnp.float16 for leaf in leaves):
        return model.params
    return jax.tree.map(lambda a: a.astype(jnp.float32) if a.dtype == jnp.float16 else a, model.params)
