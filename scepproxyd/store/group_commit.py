"""
Group commit: small writes queued at the same moment share one transaction on a DB thread.

Why: a one-time challenge spent per PKIOperation is a few microseconds of SQL
and a whole COMMIT (and on PostgreSQL a BEGIN, a COMMIT and a pool check, each a
round trip). Run alone, consumes/s equals commits/s. Grouped, a burst of them
costs one COMMIT, and each caller still hears its own answer.

How, and why so:

- **Opt-in per job** (``Database._submit(fn, group=True)``), for short writes
  only: a long job in a batch would hold every other caller of the batch.
- **No timer.** A grouped job goes into a queue; a batch job handed to the
  DB thread pool takes everything queued at the moment it starts (at most
  ``MAX_BATCH``). At low load a batch is one job and nothing waits longer
  than before; under load, jobs queue while a batch runs, and the next batch
  grows by itself (shared among the DB threads on PostgreSQL: ``batch_cap``).
  Every queued job is covered by a batch job already in the
  pool's queue, so whatever is submitted later (``stop()``'s close, a read
  of what was written) still runs after it.
- **A job that raises takes nobody with it.** The batch runs optimistically
  without savepoints; if a job raises, or leaves the transaction unusable (a
  swallowed PostgreSQL error aborts the whole transaction, SQLite ends it by
  itself on a full disk), the batch is rolled back and each of its jobs runs
  again in a transaction of its own, exactly as an ungrouped job, so each
  caller gets its own result or its own error. Savepoints would cost a round
  trip per job on PostgreSQL on the common path, and would not survive
  SQLite's own rollback. Re-running is safe because a job's effects are all
  in the database, and none of the first run's are left.
- **If BEGIN or COMMIT fails**, every caller of the batch gets that failure:
  after a failed COMMIT nobody knows which jobs took effect, so none is run again.
- **Answers go back in one hop**: one ``callFromThread`` per batch fires each
  caller's Deferred on the reactor thread.
"""

from __future__ import annotations

import collections
import threading

from twisted.internet import defer
from twisted.python.failure import Failure

from scepproxyd.store import postgres

#: The most jobs one transaction takes on one DB thread (SQLite); the rest wait for the next batch.
MAX_BATCH = 64
#: The fewest a batch may be capped at, with many DB threads: enough to make BEGIN and COMMIT cheap.
MIN_CAP = 8


def batch_cap(threads: int) -> int:
    """
    The most jobs one batch takes with ``threads`` DB threads: ``MAX_BATCH`` shared among them (at least ``MIN_CAP``).

    On PostgreSQL each statement of a job is a round trip, so a batch of 64
    holds 64 callers on one connection while the other DB threads idle;
    with the cap shared, 64 outstanding writes run as 4 batches of 16 on 4
    connections at once (about 4,600/s against 2,300 to 4,500/s with one
    batch of 64 on the 2-core VM, bench/store_calls.py).
    """
    return max(MIN_CAP, MAX_BATCH // max(1, threads))


def run_together(conn, fns, begin: str):
    """
    Every ``fn(conn)`` of ``fns`` in one transaction: their results, or None if one failed.

    None means the transaction was rolled back, nothing of any job is left,
    and each job should run again alone. An error of ``begin``, of COMMIT or
    of the ROLLBACK itself propagates: it concerns every job alike.
    """
    conn.execute(begin)
    results = []
    try:
        for fn in fns:
            results.append(fn(conn))
            if not _still_usable(conn):
                break
    except BaseException:
        pass
    if len(results) == len(fns) and _still_usable(conn):
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    return None


def _still_usable(conn) -> bool:
    """Whether the batch's transaction is open and can go on after a job (which may have swallowed an error)."""
    if isinstance(conn, postgres.Connection):
        return conn.in_usable_transaction
    return conn.in_transaction


def outcome(call, *args):
    """``(True, result)`` of ``call(*args)``, or ``(False, Failure)`` if it raised; on a DB thread."""
    try:
        return True, call(*args)
    except BaseException:
        return False, Failure()


class WriteQueue:
    """
    The grouped jobs waiting for a batch, and the batch jobs handed to the DB thread pool.

    ``run_batch(fns)`` runs on a DB thread and returns one ``(ok, value)``
    per job, ``value`` a result or a Failure.
    """

    def __init__(self, reactor, run_batch, max_batch: int = MAX_BATCH):
        self._reactor = reactor
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queued: collections.deque = collections.deque()  # (fn, Deferred)
        #: Batch jobs in the pool's queue that have not taken their jobs yet; together they
        #: cover every queued job (runners * max_batch >= len(queued)).
        self._runners = 0

    def submit(self, pool, fn) -> defer.Deferred:
        """Queue ``fn``; the Deferred fires (on the reactor thread) once its batch has committed, or fails."""
        d = defer.Deferred()
        with self._lock:
            self._queued.append((fn, d))
            uncovered = self._runners * self._max_batch < len(self._queued)
            if uncovered:
                self._runners += 1
        if uncovered:
            pool.callInThread(self._take_and_run)
        return d

    def _take_and_run(self) -> None:
        """On a DB thread: take what is queued now (up to the cap), run it as one batch, answer each caller."""
        with self._lock:
            self._runners -= 1
            batch = [self._queued.popleft() for _ in range(min(self._max_batch, len(self._queued)))]
        if not batch:
            return
        fns = [fn for fn, _ in batch]
        try:
            outcomes = self._run_batch(fns)
        except BaseException:
            outcomes = [(False, Failure())] * len(fns)
        self._reactor.callFromThread(_answer, [d for _, d in batch], outcomes)


def _answer(deferreds, outcomes) -> None:
    for d, (ok, value) in zip(deferreds, outcomes):
        if ok:
            d.callback(value)
        else:
            d.errback(value)
