"""The one error type for input a user can get wrong.

Raise `UserError` (or a subclass, like `mvq.config.ConfigError`) with a message that says what
is wrong and what to do; the `mvq` command prints it as one line and exits 1, no traceback.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, a missing file, a refused action: the message is for the user."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named is not there (still a FileNotFoundError to Python callers)."""


class InvalidInputError(UserError, ValueError):
    """A value or file the user gave cannot be used (still a ValueError to Python callers)."""
