"""Group commit (store.group_commit): short writes queued together share one transaction, each caller answered alone."""

import threading

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from scepproxyd.store import DuplicateError, NotFoundError, StoreError, StoreUnavailable, group_commit
from scepproxyd.store.challenges import _insert_challenge
from scepproxyd.store.models import challenge_hash, mint_challenge
from support.store import HOST, PROFILE, migrated, raw, seed, started_store


class Transactions:
    """Wraps group_commit.run_together: ``batches`` holds (jobs, committed) for each batch transaction tried."""

    def __init__(self, monkeypatch):
        self.batches = []
        run_together = group_commit.run_together

        def counted(conn, fns, begin):
            results = run_together(conn, fns, begin)
            self.batches.append((len(fns), results is not None))
            return results

        monkeypatch.setattr(group_commit, "run_together", counted)


class HeldThreads:
    """Every DB thread of ``store`` busy until ``release()``: what is submitted meanwhile is queued at the same moment."""

    def __init__(self, store):
        self._go = threading.Event()
        self._holding = [store._submit(self._hold, write=False) for _ in range(store._threads)]

    def _hold(self, conn):
        self._go.wait()

    async def release(self):
        self._go.set()
        await defer.gatherResults(self._holding)


async def queued_together(store, make_calls):
    """``make_calls()`` (a list of Deferreds) while every DB thread is held; their outcomes (result or Failure)."""
    held = HeldThreads(store)
    try:
        calls = make_calls()
    finally:
        await held.release()
    return [value for _, value in await defer.DeferredList(calls, consumeErrors=True)]


async def challenges(store, count):
    await seed(store)
    return [await store.new_challenge(HOST, PROFILE) for _ in range(count)]


@pytest_twisted.ensureDeferred
async def test_consumes_queued_together_commit_in_one_transaction_each(store, monkeypatch):
    minted = await challenges(store, 150)
    transactions = Transactions(monkeypatch)
    consumed = await queued_together(store, lambda: [store.consume_challenge(c, HOST, PROFILE) for c in minted])
    assert [c.challenge_hash for c in consumed] == [challenge_hash(c) for c in minted]
    # At most the cap share one transaction: 64 with SQLite's one DB thread (150 = 64 + 64 + 22), 16 with
    # PostgreSQL's four (pool_size's default), so that 64 outstanding writes run on four connections at once.
    cap = group_commit.batch_cap(store._threads)
    assert cap == (64 if store.engine == "sqlite" else 16)
    expected = [(cap, True)] * (150 // cap) + [(150 % cap, True)]
    assert sorted(transactions.batches) == sorted(expected)
    assert await defer.gatherResults([store.consume_challenge(c, HOST, PROFILE) for c in minted]) == [None] * 150


@pytest_twisted.ensureDeferred
async def test_a_lone_write_is_a_batch_of_one(store, monkeypatch):
    (challenge,) = await challenges(store, 1)
    transactions = Transactions(monkeypatch)
    assert (await store.consume_challenge(challenge, HOST, PROFILE)).challenge_hash == challenge_hash(challenge)
    assert transactions.batches == [(1, True)]


@pytest_twisted.ensureDeferred
async def test_one_challenge_consumed_many_times_at_once_has_one_winner(store):
    minted = await challenges(store, 5)
    tries = [challenge for challenge in minted for _ in range(8)]
    # Queued together (one batch), then as they come (batches of whatever is queued, on every DB thread).
    together = await queued_together(store, lambda: [store.consume_challenge(c, HOST, PROFILE) for c in tries[:8]])
    assert sum(c is not None for c in together) == 1
    rest = await defer.gatherResults([store.consume_challenge(c, HOST, PROFILE) for c in tries[8:]])
    winners = [c.challenge_hash for c in rest if c is not None]
    assert sorted(winners) == sorted(challenge_hash(c) for c in minted[1:])


@pytest_twisted.ensureDeferred
async def test_a_failing_job_leaves_nothing_and_takes_nobody_with_it(store, engine, clock, monkeypatch):
    first, second, spare = await challenges(store, 3)
    never = mint_challenge()

    def wrote_then_refused(conn):
        _insert_challenge(conn, never, HOST, PROFILE, clock.seconds())
        raise NotFoundError("refused after writing")

    def broken_statement(conn):
        conn.execute("SELECT no_such_column FROM challenges")

    def duplicate_row(conn):
        for _ in range(2):
            conn.execute("INSERT INTO challenges_in_flight (challenge_hash, host_uuid, profile_uuid, created_at,"
                         " claimed_at) VALUES ('same', ?, ?, 0, 0)", (HOST, PROFILE))

    transactions = Transactions(monkeypatch)
    outcomes = await queued_together(store, lambda: [
        store.consume_challenge(first, HOST, PROFILE),
        store._submit(wrote_then_refused, group=True),
        store._submit(broken_statement, group=True),
        store._submit(duplicate_row, group=True),
        store.consume_challenge(second, HOST, PROFILE),
    ])
    consumed_first, refused, broken, duplicate, consumed_second = outcomes
    assert consumed_first.challenge_hash == challenge_hash(first)
    assert consumed_second.challenge_hash == challenge_hash(second)
    assert type(refused.value) is NotFoundError and str(refused.value) == "refused after writing"
    assert type(broken.value) is StoreError and "database error in broken_statement" in str(broken.value)
    if engine == "postgresql":
        assert type(duplicate.value) is DuplicateError and "duplicate_row" in str(duplicate.value)
    else:
        assert type(duplicate.value) is StoreError and "database error in duplicate_row" in str(duplicate.value)
    # The batch was rolled back once, then each job ran in a transaction of its own.
    assert transactions.batches == [(5, False)]
    # Only the consumes stayed: both spent, both in flight; nothing of the failed jobs.
    assert await store.consume_challenge(first, HOST, PROFILE) is None
    assert await store.consume_challenge(second, HOST, PROFILE) is None
    assert await store.consume_challenge(never, HOST, PROFILE) is None
    assert (await store.consume_challenge(spare, HOST, PROFILE)).challenge_hash == challenge_hash(spare)
    in_flight = raw(store).execute("SELECT challenge_hash FROM challenges_in_flight ORDER BY challenge_hash").fetchall()
    assert sorted(row[0] for row in in_flight) == sorted(challenge_hash(c) for c in (first, second, spare))
    assert store.write_problem is None


@pytest_twisted.ensureDeferred
async def test_a_job_that_swallows_an_error_does_not_undo_the_others(store, engine, monkeypatch):
    first, second = await challenges(store, 2)

    def swallowed_error(conn):
        try:  # on PostgreSQL the transaction now refuses all but ROLLBACK, and COMMIT would roll it back
            conn.execute("SELECT no_such_column FROM challenges")
        except Exception:
            pass
        return "went on"

    transactions = Transactions(monkeypatch)
    consumed_first, consumed_second, swallowed = await queued_together(store, lambda: [
        store.consume_challenge(first, HOST, PROFILE),
        store.consume_challenge(second, HOST, PROFILE),
        store._submit(swallowed_error, group=True),  # last: no statement of another job after it fails
    ])
    assert swallowed == "went on"
    # SQLite carries on after a failed statement; PostgreSQL's batch is tried again job by job.
    assert transactions.batches == [(3, engine == "sqlite")]
    assert (consumed_first.challenge_hash, consumed_second.challenge_hash) == (challenge_hash(first), challenge_hash(second))
    assert await store.consume_challenge(first, HOST, PROFILE) is None
    assert await store.consume_challenge(second, HOST, PROFILE) is None


@pytest_twisted.ensureDeferred
async def test_grouped_writes_still_move_targets_generation_for_each_caller(store):
    def small_write(conn):
        return "done"

    before = store.targets_generation
    outcomes = await queued_together(store, lambda: [
        store._submit(small_write, group=True, changes_targets=True) for _ in range(3)])
    assert outcomes == ["done"] * 3
    assert store.targets_generation == before + 3


@pytest_twisted.ensureDeferred
async def test_stop_drains_grouped_writes_then_refuses_them(store):
    minted = await challenges(store, 10)
    held = HeldThreads(store)
    consumes = [store.consume_challenge(c, HOST, PROFILE) for c in minted]
    stopped = store.stop()
    await held.release()
    consumed = await defer.gatherResults(consumes)
    await stopped
    assert [c.challenge_hash for c in consumed] == [challenge_hash(c) for c in minted]
    with pytest.raises(StoreError, match="store is not running"):
        await store.consume_challenge(minted[0], HOST, PROFILE)


@pytest_twisted.ensureDeferred
async def test_a_full_disk_fails_every_caller_of_the_batch_and_readiness_comes_back(
        tmp_path, clock, small_tmpfs, fill_up):
    directory = small_tmpfs(tmp_path / "db", "4m")
    store = await started_store(migrated(directory / "scepproxyd.sqlite3"), reactor, clock)
    try:
        minted = await challenges(store, 4)
        await store.probe_writes()
        filler = fill_up(directory)
        with pytest.raises(StoreUnavailable):
            await store.probe_writes()  # empties the WAL, so the next writes need new space
        outcomes = await queued_together(store, lambda: [store.consume_challenge(c, HOST, PROFILE) for c in minted])
        assert [type(o.value) for o in outcomes] == [StoreUnavailable] * 4
        assert {o.value.reason for o in outcomes} == {"disk full (SQLITE_FULL)"}
        assert store.write_problem == "disk full (SQLITE_FULL)"
        filler.unlink()
        consumed = await queued_together(store, lambda: [store.consume_challenge(c, HOST, PROFILE) for c in minted])
        assert [c.challenge_hash for c in consumed] == [challenge_hash(c) for c in minted]
        assert store.write_problem is None
    finally:
        await store.stop()
