"""Matrix FLOPs of a jitted function, read from its jaxpr with every loop counted at its trip count.

XLA's `cost_analysis()` counts the body of a `scan` or `while` once, so a scanned 28-layer forward looks
like one layer. This counter walks the jaxpr instead: `dot_general` costs `2 · |output| · |contracted|`,
LU / Cholesky factorisations `2/3 n³` and `1/3 n³`, triangular solves `n² · k`; a `scan` multiplies its
body by its length, a `while` by `while_trips` (loops that may stop early are counted at their
maximum), a `cond` costs its dearest branch. Elementwise work is ignored (matmuls dominate).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax


def _sub_jaxprs(value: Any) -> list:
    if hasattr(value, "jaxpr") and hasattr(value, "consts"):  # ClosedJaxpr
        return [value.jaxpr]
    if hasattr(value, "eqns"):  # Jaxpr
        return [value]
    if isinstance(value, tuple | list):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def jaxpr_flops(jaxpr: Any, while_trips: int = 1) -> float:
    """Matrix FLOPs of a `Jaxpr` (see the module docstring)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            size = math.prod(lhs[d] for d in contract)
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * size
        elif name in ("lu", "cholesky"):
            *batch, n, _ = eqn.invars[0].aval.shape
            total += math.prod(batch) * (2.0 if name == "lu" else 1.0) / 3.0 * n**3
        elif name == "triangular_solve":
            a, b = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            total += math.prod(b) * a[-1]
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"].jaxpr, while_trips)
        elif name == "while":
            body = jaxpr_flops(eqn.params["body_jaxpr"].jaxpr, while_trips)
            cond = jaxpr_flops(eqn.params["cond_jaxpr"].jaxpr, while_trips)
            total += while_trips * (body + cond)
        elif name == "custom_linear_solve":  # only the forward solve runs (the rest serve transposition)
            total += jaxpr_flops(eqn.params["jaxprs"].solve.jaxpr, while_trips)
        elif name == "cond":
            total += max(jaxpr_flops(b.jaxpr, while_trips) for b in eqn.params["branches"])
        else:
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    total += jaxpr_flops(sub, while_trips)
    return total


def matmul_flops(
    fn: Callable, *args: Any, while_trips: int = 1, static_argnums: tuple[int, ...] = ()
) -> float:
    """Matrix FLOPs of `fn(*args)` (abstract args allowed; `static_argnums` as for `jax.make_jaxpr`)."""
    closed = jax.make_jaxpr(fn, static_argnums=static_argnums)(*args)
    return jaxpr_flops(closed.jaxpr, while_trips)
