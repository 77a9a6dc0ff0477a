"""The one exception type for user errors."""

from __future__ import annotations


class KdnasError(Exception):
    """A user error: the message says what was wrong and what to do.

    The CLI prints it without a traceback and exits with status 2. Programming errors are
    other exception types and keep their traceback.
    """
