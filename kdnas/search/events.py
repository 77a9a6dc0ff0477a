"""What the search tells its caller as it goes: ``on_event(kind, info)``, defined once.

Kinds: ``study_start``, ``reference_start``/``reference_end``, ``trial_start``, ``step``,
``trial_end``, ``infeasible``, ``duplicate``, ``waiting``, ``noise_start``/``noise_end``.
The CLI's progress display (:mod:`kdnas.cli.progress`) is the main listener.
"""

from __future__ import annotations

from collections.abc import Callable

Event = Callable[[str, dict], None]


def step_events(emit: Event) -> Callable[[int, int, float], None]:
    """A trainer's progress callback that reports each read-back as a ``step`` event."""
    return lambda step, total, loss: emit("step", {"step": step, "total": total,
                                                   "loss": loss})
