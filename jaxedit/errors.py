"""The errors jaxedit raises for input a user can correct, apart from the bugs it may have.

Every deliberate refusal (a bad argument, a file that is not what it claims, settings out of range, a
cache or journal that does not belong to the model at hand) raises an `InputError` or a subclass, with a
one-line message naming what was wrong. The command line prints that line and exits with status 2;
any other exception is a bug in jaxedit, shown with its traceback and a request to report it.
`InputError` is a `ValueError`, so callers that catch `ValueError` keep working.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input the caller can correct: an argument, a file, a setting or a state that jaxedit refuses."""


class NotAppliedError(InputError, KeyError):
    """An edit, fact or id that the model at hand does not carry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NumericsError(InputError, FloatingPointError):
    """A computation that produced non-finite values or lost the precision it needs."""


class FilesError(InputError):
    """A write that would destroy a file jaxedit did not write, or an unreadable file of jaxedit's."""
