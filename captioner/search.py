"""Finding photos by their captions (FTS5, porter stemming) and read-only SQL."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from .store import PHOTO_CAPTIONS_JOIN, Store

MARK_START, MARK_END = "\x02", "\x03"  # snippet highlight markers, rendered by the caller


class QueryError(Exception):
    """The user's search or SQL could not run; the message says why."""


def search(store: Store, query: str | None, *, model: str | None = None, since: str | None = None,
           until: str | None = None, limit: int = 20, tags: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Best matches first (bm25), one row per photo path and model. The words are
    looked for in captions, titles and keywords; each of `tags` must be one of
    the caption's keywords (any case)."""
    where, params = ["c.status = 'ok'"], {"query": query, "limit": limit}
    if query is not None:
        where.append("captions_fts MATCH :query")
    for number, tag in enumerate(tags):
        where.append(f"EXISTS (SELECT 1 FROM tags t WHERE t.caption_id = c.id AND t.tag = :tag{number} "
                     "COLLATE NOCASE)")
        params[f"tag{number}"] = tag.strip()
    if model:
        where.append("c.model = :model")
        params["model"] = model
    if since:
        where.append("i.taken_at >= :since")
        params["since"] = since
    if until:
        # A bare date means up to the end of that day.
        where.append("i.taken_at < CASE WHEN length(:until) = 10 THEN date(:until, '+1 day') ELSE :until END")
        params["until"] = until
    if query is None:  # keywords only: no ranking, newest photos first
        matched = "c.caption AS snippet, 0.0 AS score FROM " + PHOTO_CAPTIONS_JOIN
        order = "i.taken_at DESC, i.path"
    else:
        matched = (f"snippet(captions_fts, -1, '{MARK_START}', '{MARK_END}', '…', 16) AS snippet, "
                   f"bm25(captions_fts) AS score FROM {PHOTO_CAPTIONS_JOIN} "
                   "JOIN captions_fts ON captions_fts.rowid = c.id")
        order = "score, i.path"
    sql = f"""
        SELECT i.path, c.model, i.taken_at, c.caption, c.title, c.keywords, {matched}
        WHERE {' AND '.join(where)}
        ORDER BY {order}
        LIMIT :limit
    """
    try:
        return list(store.query(sql, params))
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            raise
        raise QueryError(f"invalid search query {query!r}: {exc} "
                         '(put words with punctuation in double quotes, e.g. "t-shirt")') from exc


# What read-only SQL may do: read tables, call functions, and ask harmless pragmas.
READ_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list",
                "database_list", "table_list", "function_list", "collation_list", "compile_options"}


def _authorize(action: int, arg1: Any, arg2: Any, db_name: Any, source: Any) -> int:
    if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE):
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and str(arg1).lower() in READ_PRAGMAS and arg2 is None:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


class Interrupted(Exception):
    """Ctrl-C stopped a query."""


@contextlib.contextmanager
def interruptible(store: Store) -> Iterator[None]:
    """Ctrl-C stops a running query (even an endless recursive CTE), raising
    `Interrupted`: SQLite calls back every few thousand steps, and the
    callback aborts the query once the signal has arrived."""
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    store.conn.set_progress_handler(lambda: 1 if stop.is_set() else 0, 10_000)
    try:
        yield
    except sqlite3.OperationalError as exc:
        if stop.is_set() or "interrupted" in str(exc):
            raise Interrupted() from exc
        raise
    finally:
        store.conn.set_progress_handler(None, 0)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if stop.is_set():
        raise Interrupted()


def run_sql(store: Store, sql: str) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    """Run one statement that can only read: the database is opened read-only
    and an authorizer denies every action that is not a read. The rows come
    one at a time, so a result of millions of rows is never held in memory."""
    conn = store.conn
    conn.set_authorizer(_authorize)
    try:
        cursor = conn.execute(sql)
        columns = [d[0] for d in cursor.description or []]
    except sqlite3.DatabaseError as exc:
        message = str(exc)
        if "interrupted" in message:
            raise
        if "not authorized" in message or "readonly" in message:
            message = f"captioner sql is read-only ({message})"
        raise QueryError(message) from exc
    except sqlite3.ProgrammingError as exc:  # e.g. several statements at once
        raise QueryError(str(exc)) from exc
    finally:
        conn.set_authorizer(None)
    return columns, iter(cursor)


def tag_counts(store: Store, model: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Each keyword with how many photos (distinct contents) carry it in an ok caption, most used first."""
    where = "WHERE c.status = 'ok'" + (" AND c.model = :model" if model else "")
    sql = f"""
        SELECT min(t.tag) AS tag, count(DISTINCT i.sha256) AS photos
        FROM tags t JOIN captions c ON c.id = t.caption_id JOIN images i ON i.id = t.image_id
        {where}
        GROUP BY t.tag COLLATE NOCASE
        ORDER BY photos DESC, tag COLLATE NOCASE
        {"LIMIT :limit" if limit else ""}
    """
    return list(store.query(sql, {"model": model, "limit": limit}))
