"""A study database that may go away for a while (PostgreSQL restarted, a SQLite file briefly
locked or unreadable): every storage call that fails to reach the database waits and tries
again, with backoff, for up to PATIENCE_SECONDS, saying so in one line, instead of failing
the trial or the worker. Calls that reached the database and were refused (a constraint, a
finished trial) are not retried."""

from __future__ import annotations

import functools
import logging
import threading
import time

import optuna
import sqlalchemy.exc

log = logging.getLogger(__name__)

PATIENCE_SECONDS = 600.0  # how long a worker waits for its database before giving up
FIRST_WAIT, MAX_WAIT = 1.0, 30.0  # backoff between tries, seconds


def _unreachable(e: BaseException | None) -> bool:
    """A failure to reach the database (connection refused or lost, server shutting down,
    file locked or unreadable), as opposed to a refusal by it; also when Optuna wrapped it
    (its StorageInternalError on a failed commit keeps the cause)."""
    for _ in range(4):
        if e is None:
            return False
        if isinstance(e, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return True
        e = e.__cause__ or e.__context__
    return False


class _Depth(threading.local):
    n = 0


_depth = _Depth()  # one count for every wrapped method: a call made inside another is not
# retried on its own, so a nested call cannot stack a second wait on the first


def _patient(fn):
    depth = _depth

    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        if depth.n:  # inside another patient call: the outer one retries
            return fn(self, *args, **kwargs)
        wait, waited, told = FIRST_WAIT, 0.0, False
        while True:
            depth.n += 1
            try:
                out = fn(self, *args, **kwargs)
                if told:
                    log.warning("the study's database is back after %.0f s: going on", waited)
                return out
            except Exception as e:
                if not _unreachable(e) or waited >= PATIENCE_SECONDS:
                    raise
                if not told:
                    cause = e.__cause__ or e
                    first = str(getattr(cause, "orig", cause)).strip().splitlines()[0][:200]
                    log.warning("the study's database cannot be reached (%s): waiting and "
                                "trying again, for up to %.0f minutes", first,
                                PATIENCE_SECONDS / 60)
                    told = True
            finally:
                depth.n -= 1
            time.sleep(wait)
            waited += wait
            wait = min(2 * wait, MAX_WAIT)
    return call


class PatientRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose every public call waits out an unreachable database."""


for _name in dir(optuna.storages.RDBStorage):
    _attr = getattr(optuna.storages.RDBStorage, _name)
    if not _name.startswith("_") and callable(_attr) and not isinstance(_attr, type):
        setattr(PatientRDBStorage, _name, _patient(_attr))
del _name, _attr
