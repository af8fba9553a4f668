"""The one error type for mistakes a user can make (bad file, missing model, K < 2, ...).

The CLI prints an `SIError` as one line and exits with code 2, without a traceback.
Bugs stay ordinary exceptions, so they keep their traceback.
"""

from __future__ import annotations

__all__ = ["SIError", "USER_FAILURES"]


class SIError(ValueError):
    """A user-caused problem. The message names the file or field, what was found and the fix."""


# What a command reports as one line instead of a traceback: bad input (SIError), the system
# (disk full, permission denied: OSError) and Ctrl-C.
USER_FAILURES = (SIError, OSError, KeyboardInterrupt)
