"""The linear algebra of the closed-form edits: symmetric positive-definite solves in float64 on the host
(ROME's `C⁻¹ k`, Meng et al., 2022, §3.1 eq. 2; MEMIT's and PMET's `(λC + KᵀK)⁻¹`, Meng et al., 2023,
§4.3 eq. 14; Li et al., 2024), by Cholesky factors and never through an explicit inverse.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from jaxedit.edit.stats import StatsError

Factor = tuple[np.ndarray, bool]


def positive_definite_factor(c: np.ndarray) -> Factor | None:
    """The Cholesky factor of `c` for `cho_solve`, or None when `c` is not numerically positive definite.

    A second moment of keys is positive definite when its texts gave at least as many independent keys
    as the key width; a rank-deficient one can still factor in floating point, with pivots at rounding
    level, so a pivot whose square is within `width · eps` of the largest diagonal entry counts as zero.
    """
    try:
        factor = cho_factor(c)
    except np.linalg.LinAlgError:
        return None
    floor = c.shape[0] * np.finfo(c.dtype).eps * float(np.max(np.diag(c)))
    return factor if float(np.min(np.diag(factor[0]))) ** 2 > floor else None


def solve_positive_definite(a: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
    """`a⁻¹ b` (float64) for a symmetric positive-definite `a`; `StatsError` naming `name` if it is not."""
    try:
        factor = cho_factor(np.asarray(a, np.float64))
    except np.linalg.LinAlgError as err:
        raise StatsError(f"{name} is not positive definite ({err}); check the statistics") from err
    return cho_solve(factor, np.asarray(b, np.float64))
