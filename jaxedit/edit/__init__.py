"""Weight editing: second-moment statistics, target optimisation, ROME, MEMIT / PMET, fine-tuning
baselines, iReVa adaptor neurons, and edits as values (apply / revert / journal)."""

from jaxedit.edit.adaptors import AdaptorEdit, fired, list_facts, withdraw_fact
from jaxedit.edit.delta import Delta, apply, revert
from jaxedit.edit.finetune import FT, FT_L, FinetuneHparams, finetune
from jaxedit.edit.ireva import IrevaHparams, ireva
from jaxedit.edit.journal import EditJournal
from jaxedit.edit.memit import MemitHparams, memit, pmet_hparams
from jaxedit.edit.requests import Request
from jaxedit.edit.rome import RomeHparams, default_layer, rome, rome_sequence
from jaxedit.edit.stats import KeyStats, StatsError, key_statistics
from jaxedit.edit.targets import TargetHparams

__all__ = [
    "FT",
    "FT_L",
    "AdaptorEdit",
    "Delta",
    "EditJournal",
    "FinetuneHparams",
    "IrevaHparams",
    "KeyStats",
    "MemitHparams",
    "Request",
    "RomeHparams",
    "StatsError",
    "TargetHparams",
    "apply",
    "default_layer",
    "finetune",
    "fired",
    "ireva",
    "key_statistics",
    "list_facts",
    "memit",
    "pmet_hparams",
    "revert",
    "rome",
    "rome_sequence",
    "withdraw_fact",
]
