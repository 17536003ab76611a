"""The database handle: engine set-up for SQLite and PostgreSQL, reads, and group-committed writes.

Every use case that changes data runs as one *unit of work*: ``await db.write(fn)`` where ``fn`` gets
an :class:`AsyncConnection` inside a transaction and does only database work. ``write`` returns after
the transaction is committed (SPEC 1: an accepted request is on disk before the client hears yes).

SQLite allows one writer at a time and each commit costs an fsync, so there one writer task runs the
units that arrive together in a single transaction (group commit), each inside its own SAVEPOINT: a
unit that raises is rolled back alone and its caller gets the exception, the others still commit. On
PostgreSQL each unit simply gets its own transaction from the pool; the server handles concurrency.

The SQLite writer executes its statements on the event loop thread, through a plain (sync) sqlite3
connection behind an ``AsyncConnection`` look-alike (:class:`LoopConnection`): a statement on a local
SQLite file takes microseconds, while handing each one to aiosqlite's thread cost three or four thread
round trips. Only what can block is done in a worker thread: taking the write lock (``BEGIN
IMMEDIATE`` may wait for another process) and ``COMMIT`` (the fsync). Reads use aiosqlite's pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import operator
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

T = TypeVar("T")
Unit = Callable[[AsyncConnection], Awaitable[T]]
#: Many requests' work in one go (Database.write_batched): given the items in arrival order, one
#: outcome per item, in order: its result, or an Exception that is that item's alone (the function
#: wrote nothing for it). Raising instead fails the whole batch: every item is then run alone.
BatchUnit = Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]]

#: Units taken into one SQLite transaction at most; bounds the latency a unit adds to its batch mates.
GROUP_COMMIT_MAX = 256
#: Units the SQLite writer runs back to back before letting other tasks of the loop run.
YIELD_EVERY = 8
#: PostgreSQL: transactions of one batched unit (Database.write_batched) a daemon runs at once.
BATCHES_IN_FLIGHT = 2


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    busy_timeout_ms: int = 5000,
    pg_schema: str | None = None,
    null_pool: bool = False,
) -> AsyncEngine:
    """Build the async engine for ``url`` with the settings each backend needs.

    SQLite: WAL (readers never block the writer), foreign keys on, a busy timeout so several
    processes can share the file, ``synchronous=FULL`` so a committed transaction survives power loss,
    and transactions begun by us (``BEGIN`` / ``BEGIN IMMEDIATE``) instead of by the driver.
    PostgreSQL: ``pg_schema`` puts every table in that schema (tests use a fresh one per run).
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        db_path = parsed.database
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": busy_timeout_ms / 1000}
        if null_pool:
            kwargs["poolclass"] = NullPool
        engine = create_async_engine(url, **kwargs)
        _setup_sqlite(engine, busy_timeout_ms)
        return engine
    if parsed.get_backend_name() == "postgresql":
        connect_args: dict[str, Any] = {}
        if pg_schema:
            connect_args["server_settings"] = {"search_path": pg_schema}
        kwargs["connect_args"] = connect_args
        if null_pool:
            kwargs["poolclass"] = NullPool
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        return create_async_engine(url, **kwargs)
    raise ValueError(f"unsupported database url scheme: {parsed.drivername}")


def _sqlite_sync_engine(url: str, busy_timeout_ms: int) -> Engine:
    """The group writer's own connection: the same file through the stdlib driver, usable from the
    loop thread and from worker threads in turn (never at the same time)."""
    parsed = make_url(url).set(drivername="sqlite")
    engine = create_engine(
        parsed,
        poolclass=NullPool,
        connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
    )
    _setup_sqlite_events(engine, busy_timeout_ms)
    return engine


def _setup_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    _setup_sqlite_events(engine.sync_engine, busy_timeout_ms)


def _setup_sqlite_events(sync_engine: Engine, busy_timeout_ms: int) -> None:

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN; pysqlite's implicit transactions would
        # defer the write lock and make two writers deadlock (SQLITE_BUSY without waiting).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # The writer takes the write lock up front (BEGIN IMMEDIATE) so the busy timeout applies.
        if conn.get_execution_options().get("sqlite_immediate"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


@dataclass(frozen=True, slots=True)
class _InsertPlan:
    """An INSERT for one key set: the values of ``keys`` in order, ``converted`` (index, bind
    processor) for the columns whose type converts, then the ``fixed`` scalar defaults."""

    sql: str
    keys: tuple[str, ...]
    converted: tuple[tuple[int, Callable[[Any], Any]], ...]
    fixed: tuple[Any, ...]
    #: The values of ``keys`` from a row dict, as a tuple (operator.itemgetter: no Python loop).
    values: Callable[[dict[str, Any]], tuple[Any, ...]]


_INSERT_PLANS: dict[tuple[str, tuple[str, ...]], _InsertPlan] = {}


async def insert(
    conn: AsyncConnection, table: sa.Table, values: dict[str, Any] | list[dict[str, Any]]
) -> int | None:
    """``INSERT`` rows of ``table``: raw sqlite3 inside the SQLite writer, SQLAlchemy elsewhere.

    For the hot paths (a message, its parts, its event, ledger and job rows), where SQLAlchemy's
    per-call statement set-up cost more than SQLite's own work. Returns the new row's integer key
    for a single row (None for several rows, or a non-integer key).
    """
    if isinstance(conn, LoopConnection):
        return conn.insert_now(table, values)
    result = await conn.execute(table.insert(), values)
    if isinstance(values, list):
        return None
    key = result.inserted_primary_key
    return int(key[0]) if key and isinstance(key[0], int) else None


async def fetch(
    conn: AsyncConnection, statement: Any, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows of a prebuilt (module-level) statement as dicts: raw sqlite3 inside the SQLite writer,
    SQLAlchemy elsewhere. For the hot paths, like :func:`insert`; the results are the same."""
    if isinstance(conn, LoopConnection):
        done = conn.run_planned(statement, params)
        if done is not None:
            return done[0]
    result = await conn.execute(statement, params)
    return [dict(r) for r in result.mappings()] if result.returns_rows else []


async def fetch_one(
    conn: AsyncConnection, statement: Any, params: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    rows = await fetch(conn, statement, params)
    return rows[0] if rows else None


async def run_many(conn: AsyncConnection, statement: Any, rows: list[dict[str, Any]]) -> None:
    """Execute a prebuilt UPDATE/INSERT once per row of parameters (executemany); the rows must
    name the same parameters. Raw sqlite3 inside the SQLite writer, SQLAlchemy elsewhere."""
    if not rows:
        return
    if isinstance(conn, LoopConnection) and conn.run_planned_many(statement, rows):
        return
    await conn.execute(statement, rows)


async def run(conn: AsyncConnection, statement: Any, params: dict[str, Any] | None = None) -> int:
    """Execute a prebuilt UPDATE/DELETE/INSERT without RETURNING; the affected row count."""
    if isinstance(conn, LoopConnection):
        done = conn.run_planned(statement, params)
        if done is not None:
            return done[1]
    result = await conn.execute(statement, params)
    return int(result.rowcount)


@dataclass(frozen=True, slots=True)
class _Plan:
    """A statement compiled once for sqlite3: its SQL, where each positional value comes from (a
    parameter or a value bound in the statement) and how it is converted, and the result columns with
    their converters: what SQLAlchemy redoes on every execution. Statements that need Python-side
    column defaults evaluated per execution (prefetch) or expanding IN lists get no plan. Columns
    SQLAlchemy would fetch after the fact (postfetch) do not matter: fetch/run expose no
    ``returned_defaults``; a caller wanting a value uses RETURNING."""

    statement: Any  # kept so that id(statement) stays this statement's while the plan lives
    sql: str
    names: tuple[str, ...]
    #: Positions of expanding IN parameters (a list each): their placeholders are written per call.
    expanding: tuple[int, ...]
    converted: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, bind processor)
    defaults: dict[str, Any]
    columns: tuple[str, ...]
    result_converted: tuple[tuple[str, Callable[[Any], Any]], ...]  # (column, result processor)


_PLANS: dict[tuple[str, int, tuple[str, ...] | None], _Plan | None] = {}
#: Plans are for module-level statements (a few dozen); a statement built per call must not pile up.
_PLAN_LIMIT = 256


class LoopConnection:
    """The part of :class:`AsyncConnection` units use, over a sync Connection run on the loop thread.

    ``execute`` returns the same buffered ``CursorResult`` ``AsyncConnection.execute`` does, so a unit
    cannot tell the difference; it must not be shared outside the writer.
    """

    def __init__(self, sync_conn: Connection) -> None:
        self._conn = sync_conn
        self.dialect = sync_conn.dialect

    @property
    def sync_connection(self) -> Connection:
        return self._conn

    async def execute(self, statement: Any, parameters: Any = None, **kw: Any) -> Any:
        return self._conn.execute(statement, parameters, **kw)

    async def exec_driver_sql(self, statement: str, parameters: Any = None, **kw: Any) -> Any:
        return self._conn.exec_driver_sql(statement, parameters, **kw)

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return fn(self._conn, *args, **kw)

    async def get_raw_connection(self) -> Any:
        return self._conn.connection

    def insert_now(self, table: sa.Table, values: dict[str, Any] | list[dict[str, Any]]) -> int | None:
        """INSERT straight into sqlite3 (no statement compilation or result set-up per call), with the
        same conversions SQLAlchemy would apply (each column type's bind processor, scalar column
        defaults). Returns the last rowid."""
        rows = values if isinstance(values, list) else [values]
        if not rows:
            return None
        plan = self._insert_plan(table, tuple(rows[0]))
        raw = self._conn.connection.driver_connection
        assert raw is not None
        getter, converted, fixed = plan.values, plan.converted, plan.fixed

        def params(row: dict[str, Any]) -> list[Any]:
            out = [*getter(row), *fixed]
            for i, proc in converted:
                out[i] = proc(out[i])
            return out

        try:
            if len(rows) == 1:
                cursor = raw.execute(plan.sql, params(rows[0]))
            else:
                cursor = raw.executemany(plan.sql, [params(r) for r in rows])
        except sqlite3.Error as exc:
            raise self._error(plan.sql, rows, exc) from exc
        rowid: int | None = cursor.lastrowid
        return rowid

    def _insert_plan(self, table: sa.Table, keys: tuple[str, ...]) -> _InsertPlan:
        plan = _INSERT_PLANS.get((table.name, keys))
        if plan is None:
            defaults = {
                c.key: c.default.arg  # type: ignore[attr-defined]
                for c in table.columns
                if c.key not in keys and c.default is not None and getattr(c.default, "is_scalar", False)
            }
            names = [*keys, *defaults]
            processors = [
                table.c[n].type.dialect_impl(self.dialect).bind_processor(self.dialect) for n in names
            ]
            quoted = ", ".join(self.dialect.identifier_preparer.quote(n) for n in names)
            sql = f"INSERT INTO {table.name} ({quoted}) VALUES ({', '.join('?' * len(names))})"
            n_keys = len(keys)
            plan = _INSERT_PLANS[(table.name, keys)] = _InsertPlan(
                sql=sql,
                keys=keys,
                converted=tuple((i, p) for i, p in enumerate(processors[:n_keys]) if p is not None),
                # Scalar defaults are constants: converted once, here.
                fixed=tuple(
                    p(defaults[n]) if p is not None else defaults[n]
                    for n, p in zip(names[n_keys:], processors[n_keys:], strict=True)
                ),
                values=_tuple_getter(keys),
            )
        return plan

    def run_planned(
        self, statement: Any, params: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], int] | None:
        """Execute through a cached plan: (rows, rowcount); None when the statement has no plan (it
        needs SQLAlchemy's execution-time work: column defaults, expanding IN, ...)."""
        given = params or {}
        plan = _plan_for(statement, self.dialect, given)
        if plan is None:
            return None
        raw = self._conn.connection.driver_connection
        assert raw is not None
        values = _bind(plan, given)
        sql = plan.sql
        if plan.expanding:
            expanded = _expand(plan, values)
            if expanded is None:
                return None
            sql, values = expanded
        try:
            cursor = raw.execute(sql, values)
        except sqlite3.Error as exc:
            raise self._error(sql, values, exc) from exc
        if cursor.description is None:
            return [], cursor.rowcount
        rows = _rows(plan, cursor.fetchall())
        return rows, cursor.rowcount

    def run_planned_many(self, statement: Any, rows: list[dict[str, Any]]) -> bool:
        """:meth:`run_planned` with executemany; False when the statement has no plan for it."""
        plan = _plan_for(statement, self.dialect, rows[0])
        if plan is None or plan.expanding:
            return False
        raw = self._conn.connection.driver_connection
        assert raw is not None
        values = [_bind(plan, row) for row in rows]
        try:
            raw.executemany(plan.sql, values)
        except sqlite3.Error as exc:
            raise self._error(plan.sql, values, exc) from exc
        return True

    def in_transaction(self) -> bool:
        return self._conn.in_transaction()

    def _error(self, sql: str, params: Any, exc: sqlite3.Error) -> Exception:
        """The SQLAlchemy exception SQLAlchemy would have raised (IntegrityError, ...): callers catch
        those, whichever path ran the statement."""
        return sa.exc.DBAPIError.instance(sql, params, exc, sqlite3.Error, dialect=self.dialect)


_NO_PLAN: list[Any] = []


def _tuple_getter(keys: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    if len(keys) == 1:
        (key,) = keys
        return lambda row: (row[key],)
    getter: Callable[[dict[str, Any]], tuple[Any, ...]] = operator.itemgetter(*keys)
    return getter


def _plan_for(statement: Any, dialect: Any, given: dict[str, Any]) -> _Plan | None:
    # An INSERT's columns, and the SET of an UPDATE without values(), are the parameters it is
    # given: SQLAlchemy compiles them per key set.
    keys = tuple(given) if statement.is_insert or statement.is_update else None
    key = (dialect.name, id(statement), keys)
    if key in _PLANS:
        plan = _PLANS[key]
        if plan is None or plan.statement is statement:
            return plan
    if len(_PLANS) >= _PLAN_LIMIT:
        return None
    plan = _compile_plan(statement, dialect, keys)
    _PLANS[key] = plan
    if plan is None:
        _NO_PLAN.append(statement)  # keeps the id taken while it says "no plan"
    return plan


def _compile_plan(statement: Any, dialect: Any, keys: tuple[str, ...] | None) -> _Plan | None:
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys) if keys else None)
    if (
        compiled.positiontup is None
        or any(not b.expanding for b in compiled.post_compile_params)
        or compiled.literal_execute_params
        or getattr(compiled, "insert_prefetch", None)
        or getattr(compiled, "update_prefetch", None)
        or compiled.escaped_bind_names
    ):
        return None
    names = tuple(compiled.positiontup)
    binds = compiled.binds
    if any(binds[n].callable is not None for n in names):
        return None
    bind_procs = compiled._bind_processors
    expanding = tuple(i for i, n in enumerate(names) if binds[n].expanding)
    if any(bind_procs.get(names[i]) is not None for i in expanding):
        return None  # an IN list whose items convert: SQLAlchemy's own path
    results = compiled._result_columns
    return _Plan(
        statement=statement,
        sql=compiled.string,
        names=names,
        expanding=expanding,
        converted=tuple((i, bind_procs[n]) for i, n in enumerate(names) if bind_procs.get(n) is not None),
        defaults={n: binds[n].value for n in names if not binds[n].required},
        columns=tuple(r[0] for r in results),
        result_converted=tuple(
            (r[0], proc)
            for r in results
            if (proc := r[3]._cached_result_processor(dialect, None)) is not None
        ),
    )


def _bind(plan: _Plan, given: dict[str, Any]) -> list[Any]:
    defaults = plan.defaults
    values = [given[n] if n in given else defaults[n] for n in plan.names]
    for i, proc in plan.converted:
        values[i] = proc(values[i])
    return values


_EXPANDED: dict[tuple[str, tuple[int, ...]], str] = {}


def _expand(plan: _Plan, values: list[Any]) -> tuple[str, list[Any]] | None:
    """The SQL and flat values for this call's IN-list lengths; None for an empty list (SQLAlchemy
    writes an always-false expression for it)."""
    for i in plan.expanding:
        if not isinstance(values[i], list | tuple):
            values[i] = list(values[i])
    lengths = tuple(len(values[i]) for i in plan.expanding)
    if not all(lengths):
        return None
    sql = _EXPANDED.get((plan.sql, lengths))
    if sql is None:
        sql = plan.sql
        for i, n in zip(plan.expanding, lengths, strict=True):
            sql = sql.replace(f"__[POSTCOMPILE_{plan.names[i]}]", ", ".join("?" * n))
        if len(_EXPANDED) >= 1024:
            _EXPANDED.clear()
        _EXPANDED[(plan.sql, lengths)] = sql
    flat: list[Any] = []
    for i, value in enumerate(values):
        if i in plan.expanding:
            flat.extend(value)
        else:
            flat.append(value)
    return sql, flat


def _rows(plan: _Plan, fetched: Any) -> list[dict[str, Any]]:
    cols = plan.columns
    rows = []
    for record in fetched:
        row = dict(zip(cols, record, strict=True))
        for c, proc in plan.result_converted:
            row[c] = proc(row[c])
        rows.append(row)
    return rows


@dataclass
class _Pending:
    unit: Unit[Any] | None
    future: asyncio.Future[Any]
    #: Set instead of ``unit`` by write_batched: run together with the other items of the function.
    batch: BatchUnit | None = None
    item: Any = None


class _UnitRaised(Exception):
    """A batched unit raised inside its transaction (the error is its ``__cause__``)."""


def _together(fn: BatchUnit, items: list[Any]) -> Unit[list[Any]]:
    async def unit(conn: AsyncConnection) -> list[Any]:
        outcomes = await fn(conn, items)
        if len(outcomes) != len(items):
            raise AssertionError(f"a batched unit gave {len(outcomes)} outcomes for {len(items)} items")
        return outcomes

    return unit


def _alone(fn: BatchUnit, item: Any) -> Unit[Any]:
    """One item of a batched unit as a plain unit (its outcome raised if it is an error)."""

    async def unit(conn: AsyncConnection) -> Any:
        (outcome,) = await fn(conn, [item])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return unit


@dataclass
class Database:
    """Reads and unit-of-work writes over one engine. Build with :meth:`open`, end with :meth:`close`."""

    engine: AsyncEngine
    group_commit: bool
    _queue: asyncio.Queue[_Pending | None] = field(default_factory=asyncio.Queue)
    _writer: asyncio.Task[None] | None = None
    _closing: bool = False
    batches: int = 0  # transactions committed by the group writer (for /metrics and benchmarks)
    _sync_engine: Engine | None = None
    _sync_conn: Connection | None = None
    #: Told, after each commit, the topics its units named with :func:`notify_after_commit`.
    on_commit: Callable[[set[str]], None] | None = None
    #: write_batched on PostgreSQL: the items waiting for the next turn of the loop, per function.
    _gathering: dict[BatchUnit, list[_Pending]] = field(default_factory=dict)
    _starting: set[BatchUnit] = field(default_factory=set)
    _in_flight: dict[BatchUnit, int] = field(default_factory=dict)
    _gathered_tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_size: int = 10,
        busy_timeout_ms: int = 5000,
        pg_schema: str | None = None,
    ) -> Database:
        engine = make_engine(url, pool_size=pool_size, busy_timeout_ms=busy_timeout_ms, pg_schema=pg_schema)
        # Group commit is for SQLite, where one writer and an fsync per commit are the limits;
        # PostgreSQL runs concurrent transactions itself.
        group_commit = engine.dialect.name == "sqlite"
        db = cls(engine=engine, group_commit=group_commit)
        if group_commit:
            db._sync_engine = _sqlite_sync_engine(url, busy_timeout_ms)
            db._sync_conn = await asyncio.to_thread(db._sync_engine.connect)
            await asyncio.to_thread(db._sync_conn.execution_options, sqlite_immediate=True)
            db._writer = asyncio.create_task(db._write_loop(), name="db-group-writer")
        return db

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def write(self, unit: Unit[T]) -> T:
        """Run ``unit`` in a transaction; return its result once committed, or raise its error."""
        if self._closing:
            raise RuntimeError("database is closing")
        if not self.group_commit:
            async with self.engine.begin() as conn:
                try:
                    result = await unit(conn)
                finally:
                    topics = _take_topics(conn.sync_connection)
            self._announce(topics)  # committed (a failed COMMIT raised above)
            return result
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(unit, fut))
        return await fut

    async def write_batched(self, fn: BatchUnit, item: Any) -> Any:
        """Like :meth:`write` for one request's ``item``, but run by ``fn`` together with the other
        items given to ``fn`` meanwhile (one statement per table for all of them instead of one
        per request: the SMS accept path). Committed before it returns, like :meth:`write`; the
        item's own error is raised here. If ``fn`` fails for a whole batch, its items are run
        again one by one, so that one bad item cannot fail the others. A failed COMMIT is not
        run again (it may have been applied): its callers get the error."""
        if self._closing:
            raise RuntimeError("database is closing")
        loop = asyncio.get_running_loop()
        pending = _Pending(None, loop.create_future(), fn, item)
        if self.group_commit:
            await self._queue.put(pending)  # the group writer batches them (SQLite)
        else:
            # PostgreSQL: group commit of our own. At most BATCHES_IN_FLIGHT transactions of ``fn``
            # run at once; what arrives meanwhile waits and goes together in the next one.
            self._gathering.setdefault(fn, []).append(pending)
            self._start_soon(fn)
        return await pending.future

    def _start_soon(self, fn: BatchUnit) -> None:
        if fn in self._starting or self._in_flight.get(fn, 0) >= BATCHES_IN_FLIGHT:
            return  # already due to start, or a batch that ends will start the next
        self._starting.add(fn)
        asyncio.get_running_loop().call_soon(self._start_gathered, fn)

    def _start_gathered(self, fn: BatchUnit) -> None:
        self._starting.discard(fn)
        waiting = self._gathering.get(fn, [])
        batch, self._gathering[fn] = waiting[:GROUP_COMMIT_MAX], waiting[GROUP_COMMIT_MAX:]
        if not batch:
            return
        self._in_flight[fn] = self._in_flight.get(fn, 0) + 1
        task = asyncio.create_task(self._run_gathered(fn, batch))
        self._gathered_tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._gathered_tasks.discard(task)
            self._in_flight[fn] -= 1
            if self._gathering.get(fn):
                self._start_soon(fn)

        task.add_done_callback(done)

    async def _run_gathered(self, fn: BatchUnit, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]
        if not live:
            return
        try:
            async with self.engine.begin() as conn:
                try:
                    outcomes = await _together(fn, [p.item for p in live])(conn)
                except Exception as exc:
                    raise _UnitRaised from exc  # rolled back: nothing of it was written
                finally:
                    topics = _take_topics(conn.sync_connection)
        except _UnitRaised as failed:
            error = failed.__cause__
            assert isinstance(error, Exception)
            if len(live) == 1:
                _settle(live[0], False, error)  # alone already: that is its outcome
                return
            log.info("a batched write failed; running its items one by one", exc_info=error)
            for p in live:
                try:
                    result = await self.write(_alone(fn, p.item))
                except Exception as exc:
                    _settle(p, False, exc)
                else:
                    _settle(p, True, result)
            return
        except BaseException as exc:
            # BEGIN or COMMIT failed (or we were cancelled): a COMMIT that failed may still have
            # been applied, so the items are not run again here; their callers see the error (an
            # idempotency_key makes their retry safe).
            for p in live:
                _settle(p, False, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._announce(topics)
        for p, outcome in zip(live, outcomes, strict=True):
            _settle(p, not isinstance(outcome, Exception), outcome)

    async def write_outcome(self, unit: Unit[T], *, attempts: int = 5, delay: float = 0.2) -> T:
        """:meth:`write` for recording what already happened outside (a submit_sm the SMSC took, a
        mail the relay took): a transient database error must not turn into "not sent" and a resend
        to the customer, so the unit (atomic, hence safe to run again) is retried with backoff
        before the error is raised. Not while closing: shutdown has its own deadline."""
        for attempt in range(attempts):
            try:
                return await self.write(unit)
            except Exception:
                if self._closing or attempt == attempts - 1:
                    raise
                log.warning(
                    "recording an outcome failed; retrying", exc_info=True, extra={"attempt": attempt + 1}
                )
                await asyncio.sleep(delay * 2**attempt)
        raise AssertionError("unreachable")

    async def read(self, unit: Unit[T]) -> T:
        """Run a read-only ``unit`` on a pooled connection (its transaction is rolled back)."""
        async with self.engine.connect() as conn:
            return await unit(conn)

    def _announce(self, topics: set[str]) -> None:
        if topics and self.on_commit is not None:
            try:
                self.on_commit(topics)
            except Exception:  # a listener's bug must not turn a committed write into an error
                log.exception("on_commit listener failed")

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < GROUP_COMMIT_MAX:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:  # close(): finish this batch, then stop
                    stop = True
                    break
                batch.append(item)
            try:
                assert self._sync_conn is not None
                await self._run_batch_on_loop(batch, self._sync_conn)
            except Exception as exc:  # the commit itself failed: nobody in the batch was committed
                log.exception("group commit failed", extra={"units": len(batch)})
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)

    async def _run_batch_on_loop(self, batch: list[_Pending], sync_conn: Connection) -> None:
        outcomes: list[tuple[_Pending, bool, Any]] = []
        topics: set[str] = set()  # what the committed units changed (notify_after_commit)
        facade = LoopConnection(sync_conn)
        trans = await asyncio.to_thread(sync_conn.begin)  # BEGIN IMMEDIATE: may wait for the lock
        try:
            raw = sync_conn.connection.driver_connection
            assert raw is not None
            steps = _steps(batch)
            for n, step in enumerate(steps):
                if n and n % YIELD_EVERY == 0:
                    # Statements run on the loop thread: let HTTP, SMPP timers and the rest breathe
                    # between units of a large batch (we still hold the write lock meanwhile).
                    await asyncio.sleep(0)
                if isinstance(step, _Pending):
                    assert step.unit is not None
                    ok, value, unit_topics = await self._run_unit(raw, facade, sync_conn, step.unit)
                    topics |= unit_topics
                    outcomes.append((step, ok, value))
                    continue
                fn, members = step
                items = [p.item for p in members]
                ok, value, unit_topics = await self._run_unit(raw, facade, sync_conn, _together(fn, items))
                if ok:
                    topics |= unit_topics
                    outcomes.extend(
                        (p, not isinstance(o, Exception), o) for p, o in zip(members, value, strict=True)
                    )
                    continue
                if len(members) == 1:
                    outcomes.append((members[0], False, value))  # alone already: its outcome
                    continue
                log.info("a batched write failed; running its items one by one", exc_info=value)
                for p in members:
                    ok, value, unit_topics = await self._run_unit(raw, facade, sync_conn, _alone(fn, p.item))
                    topics |= unit_topics
                    outcomes.append((p, ok, value))
            await asyncio.to_thread(trans.commit)  # COMMIT and its fsync, off the loop
        except BaseException:
            if trans.is_active:
                await asyncio.to_thread(trans.rollback)
            raise
        self.batches += 1
        self._announce(topics)
        # Only now, after COMMIT, do the callers learn their outcome.
        for p, ok, value in outcomes:
            _settle(p, ok, value)

    @staticmethod
    async def _run_unit(
        raw: Any, facade: LoopConnection, sync_conn: Connection, unit: Unit[Any]
    ) -> tuple[bool, Any, set[str]]:
        """One unit in its own SAVEPOINT: (succeeded, result or error, topics to announce)."""
        raw.execute("SAVEPOINT gc_unit")
        try:
            result = await unit(facade)  # type: ignore[arg-type]
        except BaseException as exc:  # handed to the unit's caller (KeyboardInterrupt re-raised)
            raw.execute("ROLLBACK TO gc_unit")
            raw.execute("RELEASE gc_unit")
            _take_topics(sync_conn)  # rolled back: nothing to announce
            if not isinstance(exc, Exception):
                raise
            return False, exc, set()
        raw.execute("RELEASE gc_unit")
        return True, result, _take_topics(sync_conn)

    async def close(self) -> None:
        """Finish queued writes, then dispose of the engine."""
        if self._closing:
            return
        self._closing = True
        # PostgreSQL: batched items already handed to us are written before the engine goes.
        while any(self._gathering.values()) or self._gathered_tasks:
            for fn in [fn for fn, waiting in self._gathering.items() if waiting]:
                self._start_gathered(fn)
            if self._gathered_tasks:
                await asyncio.wait(set(self._gathered_tasks))
        if self._writer is not None:
            await self._queue.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._sync_conn is not None:
            await asyncio.to_thread(self._sync_conn.close)
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        await self.engine.dispose()


def _steps(batch: list[_Pending]) -> list[_Pending | tuple[BatchUnit, list[_Pending]]]:
    """The group writer's work in order: plain units one by one; the items of a batched unit
    together, where its first item arrived."""
    steps: list[_Pending | tuple[BatchUnit, list[_Pending]]] = []
    groups: dict[BatchUnit, list[_Pending]] = {}
    for p in batch:
        if p.future.cancelled():
            continue
        if p.batch is None:
            steps.append(p)
        elif p.batch in groups:
            groups[p.batch].append(p)
        else:
            groups[p.batch] = [p]
            steps.append((p.batch, groups[p.batch]))
    return steps


def _settle(p: _Pending, ok: bool, value: Any) -> None:
    if p.future.done():
        return
    if ok:
        p.future.set_result(value)
    else:
        p.future.set_exception(value)


_TOPICS_KEY = "gateway_commit_topics"


def notify_after_commit(conn: AsyncConnection, topic: str) -> None:
    """Have :attr:`Database.on_commit` told ``topic`` once this unit of work has committed (and
    never if it rolls back): e.g. ``events:<tenant>``, so long-polls and the webhook sender wake at
    once instead of at their next poll. A hint only: listeners must still poll for changes made by
    other processes."""
    sync = conn.sync_connection
    assert sync is not None
    sync.info.setdefault(_TOPICS_KEY, set()).add(topic)


def _take_topics(sync: Connection | None) -> set[str]:
    # Connection.info lives with the pooled DBAPI connection, so it is emptied after every unit.
    if sync is None:
        return set()
    topics: set[str] = sync.info.pop(_TOPICS_KEY, set())
    return topics


async def lock_name(conn: AsyncConnection, name: str) -> None:
    """Serialise transactions that touch ``name`` until they end (PostgreSQL advisory lock).

    For check-then-act races between concurrent transactions: e.g. a delivery receipt looking for
    its part while the part's message id is being recorded. SQLite needs nothing: its writers are
    serial already.
    """
    await lock_names(conn, [name])


async def lock_names(conn: AsyncConnection, names: list[str]) -> None:
    """:func:`lock_name` for many names in one statement, taken in a fixed order (no deadlocks)."""
    if conn.dialect.name != "postgresql" or not names:
        return
    keys = sorted(
        {int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "big", signed=True) for n in names}
    )
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"), {"keys": keys}
    )
