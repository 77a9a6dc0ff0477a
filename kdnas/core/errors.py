"""The one exception type for user errors (and its one kind a search acts on)."""

from __future__ import annotations


class KdnasError(Exception):
    """A user error: the message says what was wrong and what to do.

    The CLI prints it without a traceback and exits with status 2. Programming errors are
    other exception types and keep their traceback.
    """


class TrainingDiverged(KdnasError):
    """The loss turned NaN or infinite: a search trains such a candidate once more with the
    stabler recipe (kdnas.search.trial) before it records it as failed. ``what`` says what
    happened, ``hint`` what to try; the message is both."""

    def __init__(self, what: str, hint: str) -> None:
        super().__init__(f"{what}; {hint}")
        self.what, self.hint = what, hint

    @property
    def reason(self) -> str:
        """Why the training failed, in the words of :func:`kdnas.front.collapsed`."""
        return f"did not train: {self.what}"
