"""Weight editing: second-moment statistics, target optimisation, ROME, and edits as values."""

from jaxedit.edit.delta import Delta, apply, revert
from jaxedit.edit.journal import EditJournal
from jaxedit.edit.rome import RomeHparams, default_layer, rome
from jaxedit.edit.stats import KeyStats, StatsError, key_statistics
from jaxedit.edit.targets import Request, TargetHparams

__all__ = [
    "Delta",
    "EditJournal",
    "KeyStats",
    "Request",
    "RomeHparams",
    "StatsError",
    "TargetHparams",
    "apply",
    "default_layer",
    "key_statistics",
    "revert",
    "rome",
]
