"""Weight editing: second-moment statistics, target optimisation, ROME, and edits as values."""

from jaxedit.edit.delta import Delta, apply, revert
from jaxedit.edit.rome import RomeHparams, rome

__all__ = ["Delta", "RomeHparams", "apply", "revert", "rome"]
