"""Weight editing: second-moment statistics, target optimisation, ROME, MEMIT / PMET, fine-tuning
baselines, and edits as values (apply / revert / journal)."""

from jaxedit.edit.delta import Delta, apply, revert
from jaxedit.edit.finetune import FT, FT_L, FinetuneHparams, finetune
from jaxedit.edit.journal import EditJournal
from jaxedit.edit.memit import MemitHparams, memit, pmet_hparams
from jaxedit.edit.rome import RomeHparams, default_layer, rome, rome_sequence
from jaxedit.edit.stats import KeyStats, StatsError, key_statistics
from jaxedit.edit.targets import Request, TargetHparams

__all__ = [
    "FT",
    "FT_L",
    "Delta",
    "EditJournal",
    "FinetuneHparams",
    "KeyStats",
    "MemitHparams",
    "Request",
    "RomeHparams",
    "StatsError",
    "TargetHparams",
    "apply",
    "default_layer",
    "finetune",
    "key_statistics",
    "memit",
    "pmet_hparams",
    "revert",
    "rome",
    "rome_sequence",
]
