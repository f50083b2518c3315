"""Causal tracing (docs/methods.md §1): where a model recalls a fact.

`trace` runs one prompt; `trace_dataset` averages over a prompt set by token class; `suggest_edit_layer`
reads the MLP peak for editing defaults. The restore grids are planned on the host
(`schedule`) and run as one compiled program per kind (`program`).
"""

from jaxedit.runtime.execution import Execution
from jaxedit.trace.api import Noise, TraceResult, trace
from jaxedit.trace.dataset import DatasetTrace, suggest_edit_layer, trace_dataset

__all__ = [
    "DatasetTrace",
    "Execution",
    "Noise",
    "TraceResult",
    "suggest_edit_layer",
    "trace",
    "trace_dataset",
]
