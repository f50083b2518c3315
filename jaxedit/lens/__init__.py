"""Vocabulary-lens analyses (docs/methods.md §2; Liu et al. 2024 and Li et al. 2024): the logit lens, the attribute rate and
target rank flow at the last relation token, sublayer blocking, and PMET's component probes."""

from jaxedit.lens.core import LensReadout, lens_readout
from jaxedit.lens.probes import component_probes
from jaxedit.lens.relation import (
    LensFact,
    attribute_rate,
    attribute_tokens,
    read_attributes,
    read_lens_facts,
    sublayer_blocking,
)

__all__ = [
    "LensFact",
    "LensReadout",
    "attribute_rate",
    "attribute_tokens",
    "component_probes",
    "lens_readout",
    "read_attributes",
    "read_lens_facts",
    "sublayer_blocking",
]
