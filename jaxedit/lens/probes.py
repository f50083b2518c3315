"""PMET's component probes (Li et al. 2024 §3, Fig. 2; docs/methods.md §2): how much attention (MHSA) and the MLP
(FFN) change the last token's hidden state at each layer.

For each layer, with `h` the residual before the sublayer and `h'` after it (attention: `resid_pre` →
`resid_pre + attn_out`; MLP: that → `resid_post`): the cosine similarity of `h` and `h'`, and the Jaccard
overlap `|T ∩ T'| / |T ∪ T'|` of their top-k logit-lens tokens; means over prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxedit.io.loading import Model
from jaxedit.lens.core import lens_readout


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def _jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Jaccard overlap of id arrays `[..., k]`."""
    out = np.zeros(a.shape[:-1])
    for index in np.ndindex(*a.shape[:-1]):
        x, y = set(a[index].tolist()), set(b[index].tolist())
        out[index] = len(x & y) / len(x | y)
    return out


def component_probes(model: Model, prompts: Sequence[str], *, k: int = 50, batch: int = 32) -> dict[str, Any]:
    """Per layer, mean cosine and Jaccard of the last token's state before and after attention and the MLP."""
    readout = lens_readout(model, prompts, k=k, states=("resid_post", "resid_pre", "resid_mid"), batch=batch)
    pre, mid, post = (readout.states[s] for s in ("resid_pre", "resid_mid", "resid_post"))
    top_pre, top_mid, top_post = (readout.top[s] for s in ("resid_pre", "resid_mid", "resid_post"))
    return {
        "layers": model.config.n_layers, "prompts": len(prompts), "k": k,
        "attn_cosine": _cosine(pre, mid).mean(0).tolist(), "mlp_cosine": _cosine(mid, post).mean(0).tolist(),
        "attn_jaccard": _jaccard(top_pre, top_mid).mean(0).tolist(),
        "mlp_jaccard": _jaccard(top_mid, top_post).mean(0).tolist(),
    }  # fmt: skip
