"""Step 4: the SQLite database, the only code that writes it.

WAL mode and a long busy timeout let several captioner processes share one
file; every write is its own short `BEGIN IMMEDIATE` transaction, so a caption
is on disk the moment its response arrives. Schema changes are numbered
migrations, applied in order and recorded in `_migrations`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .models import FAILURES, CaptionResult
from .recipe import Recipe
from .schema import alt_text_of, keywords_of, title_of

if TYPE_CHECKING:  # Pillow and pillow-heif load with the commands that read photos
    from .media import PreparedImage

BUSY_TIMEOUT_MS = 60_000
# A claim older than this is stale whatever its pid says (a request with every
# retry and backoff takes minutes, not an hour).
CLAIM_TTL_SECONDS = 3600
FINAL_STATUSES = ("ok", "refused", "blocked")

# The one definition of "the captions of a photo": through its content hash,
# so a copy of a captioned photo (another path, the same bytes) shows its
# captions. `i` is the photo asked about, `c` its captions.
PHOTO_CAPTIONS_JOIN = "images i JOIN images j ON j.sha256 = i.sha256 JOIN captions c ON c.image_id = j.id"
# The one definition of "unpriced": an answer (or a billed failure: it has
# token counts) with no known cost.
UNPRICED = "(c.cost_usd IS NULL AND (c.input_tokens IS NOT NULL OR c.status != 'failed'))"


class StoreError(Exception):
    """The database cannot be opened or is not a captioner database."""


class WriteFailed(Exception):
    """A write the database refused (disk full, locked too long, read-only, I/O error)."""


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _backfill_recipes(conn: sqlite3.Connection) -> None:
    """Give every existing caption the recipe its run used (system prompt, options, size sent)."""
    runs = {row[0]: row[1] for row in conn.execute("SELECT id, options_json FROM runs")}
    rows = conn.execute("SELECT id, run_id, model, prompt FROM captions").fetchall()
    for caption_id, run_id, model, prompt in rows:
        try:
            recorded = json.loads(runs.get(run_id) or "{}")
        except ValueError:
            recorded = {}
        options = {str(k): str(v) for k, v in (recorded.get("options") or {}).items()}
        recipe = Recipe(model, (prompt or "").strip(), (recorded.get("system") or "").strip() or None, options,
                        int(recorded.get("max_side") or 1024))
        conn.execute("UPDATE captions SET system = ?, options_json = ?, max_side = ?, recipe = ? WHERE id = ?",
                     (recipe.system, recipe.options_json, recipe.max_side, recipe.key, caption_id))


# The view shows every caption of every path through the content hash, except
# failed rows that a later answer of the same recipe has replaced (they stay in
# `captions` for history).
PHOTO_CAPTIONS_VIEW = """CREATE VIEW photo_captions AS
    SELECT i.path, i.taken_at,
           trim(coalesce(i.camera_make, '') || ' ' || coalesce(i.camera_model, '')) AS camera,
           i.gps_lat, i.gps_lon, i.width, i.height,
           c.model, c.prompt, c.caption, c.status, c.error,
           c.input_tokens, c.output_tokens, c.cost_usd, c.created_at AS captioned_at,
           c.id AS caption_id, i.id AS image_id, c.system, c.recipe, i.kind, i.duration_s,
           c.title, c.keywords, c.alt_text, c.data_json
    FROM """ + PHOTO_CAPTIONS_JOIN + """
    WHERE NOT (c.status IN ('failed', 'malformed') AND EXISTS (
        SELECT 1 FROM captions later JOIN images k ON k.id = later.image_id
        WHERE k.sha256 = j.sha256 AND later.recipe = c.recipe AND later.id > c.id
          AND later.status NOT IN ('failed', 'malformed')))"""

# The view as migrations 6 and 7 made it (before structured answers and the malformed status).
PHOTO_CAPTIONS_VIEW_V7 = (PHOTO_CAPTIONS_VIEW.replace(",\n           c.title, c.keywords, c.alt_text, c.data_json", "")
                          .replace("c.status IN ('failed', 'malformed')", "c.status = 'failed'")
                          .replace("later.status NOT IN ('failed', 'malformed')", "later.status != 'failed'"))

# Each migration is a list of SQL statements (or Python steps taking the
# connection), run in one transaction.
MIGRATIONS: list[tuple[str, list[str | Callable[[sqlite3.Connection], None]]]] = [
    (
        "initial schema",
        [
            """CREATE TABLE images (
                id INTEGER PRIMARY KEY,
                path TEXT NOT NULL UNIQUE,
                sha256 TEXT,
                size INTEGER,
                mtime REAL,
                width INTEGER,
                height INTEGER,
                format TEXT,
                taken_at TEXT,
                camera_make TEXT,
                camera_model TEXT,
                gps_lat REAL,
                gps_lon REAL
            )""",
            "CREATE INDEX idx_images_sha256 ON images (sha256)",
            """CREATE TABLE runs (
                id INTEGER PRIMARY KEY,
                started_at TEXT,
                finished_at TEXT,
                model TEXT,
                prompt TEXT,
                options_json TEXT,
                status TEXT,
                images_total INTEGER DEFAULT 0,
                images_ok INTEGER DEFAULT 0,
                images_failed INTEGER DEFAULT 0,
                input_tokens INTEGER DEFAULT 0,
                output_tokens INTEGER DEFAULT 0,
                cost_usd REAL DEFAULT 0,
                pid INTEGER
            )""",
            """CREATE TABLE captions (
                id INTEGER PRIMARY KEY,
                image_id INTEGER NOT NULL REFERENCES images(id),
                run_id INTEGER REFERENCES runs(id),
                model TEXT NOT NULL,
                prompt TEXT NOT NULL,
                caption TEXT,
                status TEXT NOT NULL,
                error TEXT,
                input_tokens INTEGER,
                output_tokens INTEGER,
                reasoning_tokens INTEGER,
                cost_usd REAL,
                price_in_per_m REAL,
                price_out_per_m REAL,
                duration_ms INTEGER,
                created_at TEXT,
                usage_json TEXT
            )""",
            "CREATE INDEX idx_captions_image ON captions (image_id, model, prompt)",
            "CREATE INDEX idx_captions_run ON captions (run_id)",
            # Same shape sqlite-utils' enable_fts() makes, so Datasette finds it.
            """CREATE VIRTUAL TABLE captions_fts USING FTS5 (caption, tokenize='porter', content="captions")""",
            """CREATE TRIGGER captions_ai AFTER INSERT ON captions BEGIN
                INSERT INTO captions_fts (rowid, caption) VALUES (new.rowid, new.caption);
            END""",
            """CREATE TRIGGER captions_ad AFTER DELETE ON captions BEGIN
                INSERT INTO captions_fts (captions_fts, rowid, caption) VALUES('delete', old.rowid, old.caption);
            END""",
            """CREATE TRIGGER captions_au AFTER UPDATE ON captions BEGIN
                INSERT INTO captions_fts (captions_fts, rowid, caption) VALUES('delete', old.rowid, old.caption);
                INSERT INTO captions_fts (rowid, caption) VALUES (new.rowid, new.caption);
            END""",
        ],
    ),
    (
        "claims: one process at a time captions a given photo",
        [
            """CREATE TABLE claims (
                sha256 TEXT NOT NULL,
                model TEXT NOT NULL,
                prompt TEXT NOT NULL,
                pid INTEGER NOT NULL,
                claimed_at TEXT NOT NULL,
                PRIMARY KEY (sha256, model, prompt)
            )""",
        ],
    ),
    (
        "captions.estimated_input_tokens: what `estimate` predicted, to check it against the bill",
        ["ALTER TABLE captions ADD COLUMN estimated_input_tokens INTEGER"],
    ),
    (
        "photo_captions view: every path with every caption of its content",
        [
            """CREATE VIEW photo_captions AS
               SELECT i.path, i.taken_at,
                      trim(coalesce(i.camera_make, '') || ' ' || coalesce(i.camera_model, '')) AS camera,
                      i.gps_lat, i.gps_lon, i.width, i.height,
                      c.model, c.prompt, c.caption, c.status, c.error,
                      c.input_tokens, c.output_tokens, c.cost_usd, c.created_at AS captioned_at,
                      c.id AS caption_id, i.id AS image_id
               FROM """ + PHOTO_CAPTIONS_JOIN,
        ],
    ),
    (
        "captions carry their recipe (system prompt, options, size sent); claims are per recipe",
        [
            "ALTER TABLE captions ADD COLUMN system TEXT",
            "ALTER TABLE captions ADD COLUMN options_json TEXT",
            "ALTER TABLE captions ADD COLUMN max_side INTEGER",
            "ALTER TABLE captions ADD COLUMN recipe TEXT",
            _backfill_recipes,
            "CREATE INDEX idx_captions_recipe ON captions (recipe, status)",
            "DROP TABLE claims",
            """CREATE TABLE claims (
                sha256 TEXT NOT NULL,
                recipe TEXT NOT NULL,
                pid INTEGER NOT NULL,
                claimed_at TEXT NOT NULL,
                PRIMARY KEY (sha256, recipe)
            )""",
        ],
    ),
    (
        "photo_captions hides failed rows a later answer replaced; shows system and recipe",
        ["DROP VIEW photo_captions", PHOTO_CAPTIONS_VIEW_V7.replace(", i.kind, i.duration_s", "")],
    ),
    (
        "videos: images.kind ('image' or 'video') and images.duration_s; photo_captions carries both",
        [
            "ALTER TABLE images ADD COLUMN kind TEXT NOT NULL DEFAULT 'image'",
            "ALTER TABLE images ADD COLUMN duration_s REAL",
            "DROP VIEW photo_captions",
            PHOTO_CAPTIONS_VIEW_V7,
        ],
    ),
    (
        "provider batch jobs and their items",
        [
            """CREATE TABLE batch_jobs (
                id INTEGER PRIMARY KEY,
                tag TEXT NOT NULL UNIQUE,
                provider TEXT NOT NULL,
                model TEXT NOT NULL,
                recipe TEXT,
                provider_batch_id TEXT,
                status TEXT NOT NULL,
                items INTEGER DEFAULT 0,
                items_ok INTEGER DEFAULT 0,
                items_failed INTEGER DEFAULT 0,
                items_expired INTEGER DEFAULT 0,
                provider_counts_json TEXT,
                estimated_cost_usd REAL,
                reserved_usd REAL,
                billed_cost_usd REAL,
                run_id INTEGER REFERENCES runs(id),
                created_at TEXT,
                submitted_at TEXT,
                finished_at TEXT,
                error TEXT
            )""",
            """CREATE TABLE batch_items (
                id INTEGER PRIMARY KEY,
                job_id INTEGER NOT NULL REFERENCES batch_jobs(id),
                custom_id TEXT NOT NULL,
                image_id INTEGER NOT NULL REFERENCES images(id),
                sha256 TEXT NOT NULL,
                recipe TEXT NOT NULL,
                recipe_json TEXT,
                status TEXT NOT NULL,
                estimated_input_tokens INTEGER,
                caption_id INTEGER REFERENCES captions(id),
                UNIQUE (job_id, custom_id)
            )""",
            "CREATE INDEX idx_batch_items_open ON batch_items (sha256, recipe, status)",
        ],
    ),
    (
        "judgements: a judge model's pairwise verdicts on two captions of one photo, in each order",
        [
            """CREATE TABLE judgements (
                id INTEGER PRIMARY KEY,
                image_id INTEGER NOT NULL REFERENCES images(id),
                caption_a_id INTEGER NOT NULL REFERENCES captions(id),
                caption_b_id INTEGER NOT NULL REFERENCES captions(id),
                judge_model TEXT NOT NULL,
                judge_prompt TEXT NOT NULL,
                "order" TEXT NOT NULL,
                verdict TEXT NOT NULL,
                reason TEXT,
                input_tokens INTEGER,
                output_tokens INTEGER,
                cost_usd REAL,
                created_at TEXT,
                raw TEXT,
                UNIQUE (caption_a_id, caption_b_id, judge_model, judge_prompt, "order")
            )""",
        ],
    ),
    (
        "runs.endpoints_json: an endpoint pool's requests answered and median latency per endpoint",
        ["ALTER TABLE runs ADD COLUMN endpoints_json TEXT"],
    ),
    (
        "batch_items by custom id, for importing result files",
        ["CREATE INDEX idx_batch_items_custom_id ON batch_items (custom_id)"],
    ),
    (
        "structured answers: captions.schema_json, data_json, title, keywords, alt_text; tags; "
        "full-text search over titles and keywords too",
        [
            "ALTER TABLE captions ADD COLUMN schema_json TEXT",
            "ALTER TABLE captions ADD COLUMN data_json TEXT",
            "ALTER TABLE captions ADD COLUMN title TEXT",
            "ALTER TABLE captions ADD COLUMN keywords TEXT",
            "ALTER TABLE captions ADD COLUMN alt_text TEXT",
            """CREATE TABLE tags (
                id INTEGER PRIMARY KEY,
                caption_id INTEGER NOT NULL REFERENCES captions(id),
                image_id INTEGER NOT NULL REFERENCES images(id),
                tag TEXT NOT NULL
            )""",
            "CREATE INDEX idx_tags_tag ON tags (tag COLLATE NOCASE)",
            "CREATE INDEX idx_tags_caption ON tags (caption_id)",
            "DROP TRIGGER captions_ai",
            "DROP TRIGGER captions_ad",
            "DROP TRIGGER captions_au",
            "DROP TABLE captions_fts",
            """CREATE VIRTUAL TABLE captions_fts USING FTS5 (caption, title, keywords, tokenize='porter',
               content="captions")""",
            "INSERT INTO captions_fts (captions_fts) VALUES ('rebuild')",
            """CREATE TRIGGER captions_ai AFTER INSERT ON captions BEGIN
                INSERT INTO captions_fts (rowid, caption, title, keywords)
                VALUES (new.rowid, new.caption, new.title, new.keywords);
            END""",
            """CREATE TRIGGER captions_ad AFTER DELETE ON captions BEGIN
                INSERT INTO captions_fts (captions_fts, rowid, caption, title, keywords)
                VALUES ('delete', old.rowid, old.caption, old.title, old.keywords);
            END""",
            """CREATE TRIGGER captions_au AFTER UPDATE ON captions BEGIN
                INSERT INTO captions_fts (captions_fts, rowid, caption, title, keywords)
                VALUES ('delete', old.rowid, old.caption, old.title, old.keywords);
                INSERT INTO captions_fts (rowid, caption, title, keywords)
                VALUES (new.rowid, new.caption, new.title, new.keywords);
            END""",
            "DROP VIEW photo_captions",
            PHOTO_CAPTIONS_VIEW,
        ],
    ),
]

# Jobs that may still produce results (or whose create call's answer was lost).
OPEN_JOB_STATUSES = ("creating", "submitted")
EXPORTED = "exported"  # batch files written for a self-hosted engine, waiting for `batches import`

CLAIMED, DONE, BUSY, BATCHED = "claimed", "done", "busy", "batched"


def done_statuses(retry_failed: bool) -> tuple[str, ...]:
    """Caption statuses that count as done: failed ones too, unless they are to be retried."""
    return FINAL_STATUSES if retry_failed else (*FINAL_STATUSES, *FAILURES)


@dataclass
class DoneIndex:
    """What is already captioned with one recipe: by path (with the size and
    mtime it had) and by content hash; `failed_shas` is content whose only
    answers failed (skipped unless --retry-failed)."""

    by_path: dict[str, tuple[int, float]] = field(default_factory=dict)
    shas: set[str] = field(default_factory=set)
    failed_shas: set[str] = field(default_factory=set)
    failed_paths: set[str] = field(default_factory=set)

    def union(self, other: DoneIndex) -> DoneIndex:
        """Both indexes at once (photos and clips have recipes of their own)."""
        return DoneIndex({**self.by_path, **other.by_path}, self.shas | other.shas,
                         self.failed_shas | other.failed_shas, self.failed_paths | other.failed_paths)

    def path_done(self, path: str, size: int, mtime: float) -> bool:
        known = self.by_path.get(path)
        return known is not None and known[0] == size and abs(known[1] - mtime) < 1e-6


def readonly_uri(path: str) -> str:
    """A URI that opens `path` for reading only, whatever characters its name
    has (`#`, `?`, `%`), without creating any file. With no `-wal` file beside
    it no process is writing, so it is opened immutable: that needs no `-shm`
    file and works in a read-only folder too."""
    absolute = os.path.abspath(path)
    quoted = urllib.parse.quote(absolute)
    immutable = not os.path.exists(absolute + "-wal")
    return f"file:{quoted}?mode=ro" + ("&immutable=1" if immutable else "")


def recovery_paths(db_path: str) -> tuple[Path, Path]:
    """Where answers the database could not take are kept: beside it, or in
    the temp folder when that disk is full."""
    beside = Path(os.path.abspath(db_path) + ".recovery.jsonl")
    return beside, Path(tempfile.gettempdir()) / ("captioner-" + beside.name.lstrip("."))


class Store:
    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                if not os.path.exists(path):
                    raise StoreError(f"no database at {os.path.abspath(path)} (give one with --db FILE)")
                conn = sqlite3.connect(readonly_uri(path), uri=True, isolation_level=None)
                conn.execute("PRAGMA query_only = 1")
            else:
                folder = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(folder):
                    os.makedirs(folder, exist_ok=True)
                # The run's writes happen on one writer thread (see pipeline.Writer).
                conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                       check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.conn = conn
            self._check_kind()
            if not readonly:
                _retry_while_locked(self._set_up)
                self._replay_recovery()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"cannot open database {os.path.abspath(path)}: {exc}") from exc

    def outdated(self) -> bool:
        """Made by an older captioner: some migrations are still to be applied."""
        try:
            newest = self.conn.execute("SELECT max(id) FROM _migrations").fetchone()[0] or 0
        except sqlite3.OperationalError:
            return True
        return newest < len(MIGRATIONS)

    def _check_kind(self) -> None:
        """Refuse another application's SQLite file, and a database from a newer captioner."""
        tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return  # a new, empty database
        if "_migrations" not in tables or "captions" not in tables:
            raise StoreError(f"{self.path} is not a captioner database (it holds other tables); "
                             "give another file with --db")
        newest = self.conn.execute("SELECT max(id) FROM _migrations").fetchone()[0] or 0
        if newest > len(MIGRATIONS):
            raise StoreError(f"{self.path} was written by a newer captioner (schema {newest}, this one knows "
                             f"{len(MIGRATIONS)}); upgrade captioner to use it")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front, so concurrent
        writers wait on the busy timeout instead of deadlocking."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def _write(self, sql: str, params: Any = ()) -> tuple[int, list[tuple[Any, ...]]]:
        """One statement in its own transaction. Returns the last row id and any rows it returned."""
        with self._immediate() as conn:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall()
        return cursor.lastrowid or 0, rows

    def _set_up(self) -> None:
        # Switching to WAL needs the file to itself and does not wait on the
        # busy timeout, so only switch once, and let the caller retry.
        if self.conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        with self._immediate() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS _migrations (id INTEGER PRIMARY KEY, name TEXT, applied_at TEXT)")
            applied = {row[0] for row in conn.execute("SELECT id FROM _migrations")}
            for number, (name, statements) in enumerate(MIGRATIONS, start=1):
                if number in applied:
                    continue
                for statement in statements:
                    if callable(statement):
                        statement(conn)
                    else:
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO _migrations (id, name, applied_at) VALUES (?, ?, ?)", (number, name, utcnow())
                )

    # -- reading what is done --------------------------------------------

    def done_index(self, recipe: str, *, retry_failed: bool) -> DoneIndex:
        """What content already has a caption made with this recipe (its key)."""
        statuses = done_statuses(retry_failed)
        marks = ",".join("?" * len(statuses))
        shas = {
            row[0]
            for row in self.conn.execute(
                f"""SELECT DISTINCT i.sha256 FROM captions c JOIN images i ON i.id = c.image_id
                    WHERE c.recipe = ? AND c.status IN ({marks})""",
                (recipe, *statuses),
            )
        }
        succeeded = {
            row[0]
            for row in self.conn.execute(
                f"""SELECT DISTINCT i.sha256 FROM captions c JOIN images i ON i.id = c.image_id
                    WHERE c.recipe = ? AND c.status IN ({",".join("?" * len(FINAL_STATUSES))})""",
                (recipe, *FINAL_STATUSES),
            )
        }
        index = DoneIndex(shas=shas, failed_shas=shas - succeeded if not retry_failed else set())
        for path, size, mtime, sha in self.conn.execute("SELECT path, size, mtime, sha256 FROM images"):
            if sha in shas:
                index.by_path[path] = (size, mtime)
                if sha in index.failed_shas:
                    index.failed_paths.add(path)
        return index

    def claim(self, sha256: str, recipe: str, *, retry_failed: bool, force: bool) -> str:
        """Take the right to caption this content with this recipe.

        Returns DONE if a caption already exists (another process may have
        finished it since we started), BUSY if a live process holds the claim,
        otherwise CLAIMED. Check and claim happen in one write transaction,
        so two processes cannot both win.
        """
        statuses = done_statuses(retry_failed)
        marks = ",".join("?" * len(statuses))
        with self._immediate() as conn:
            # CROSS JOIN keeps SQLite on the content hash first (a handful of rows), never
            # walking every caption of the recipe, which grew with the library on each claim.
            if not force and conn.execute(
                f"""SELECT 1 FROM images i CROSS JOIN captions c ON c.image_id = i.id
                    WHERE i.sha256 = ? AND +c.recipe = ? AND +c.status IN ({marks}) LIMIT 1""",
                (sha256, recipe, *statuses),
            ).fetchone():
                return DONE
            if conn.execute(
                "SELECT 1 FROM batch_items WHERE sha256 = ? AND recipe = ? AND status = 'submitted' LIMIT 1",
                (sha256, recipe),
            ).fetchone():
                return BATCHED  # in an open provider batch job: collected, never sent again
            holder = conn.execute(
                "SELECT pid, claimed_at FROM claims WHERE sha256 = ? AND recipe = ?", (sha256, recipe)
            ).fetchone()
            if holder and holder[0] != os.getpid() and _pid_alive(holder[0]) and not _expired(holder[1]):
                return BUSY
            conn.execute(
                "INSERT OR REPLACE INTO claims (sha256, recipe, pid, claimed_at) VALUES (?, ?, ?, ?)",
                (sha256, recipe, os.getpid(), utcnow()),
            )
            return CLAIMED

    def release(self, sha256: str, recipe: str) -> None:
        self._write("DELETE FROM claims WHERE sha256 = ? AND recipe = ? AND pid = ?", (sha256, recipe, os.getpid()))

    def release_all(self) -> None:
        self._write("DELETE FROM claims WHERE pid = ?", (os.getpid(),))

    # -- writing ---------------------------------------------------------

    def save_image(
        self, path: str, sha256: str, size: int, mtime: float, prepared: PreparedImage | None = None,
        kind: str | None = None,
    ) -> int:
        values: dict[str, Any] = {"path": path, "sha256": sha256, "size": size, "mtime": mtime}
        if kind is not None:
            values["kind"] = kind
        if prepared is not None:
            exif = prepared.exif
            values.update(
                width=prepared.width,
                height=prepared.height,
                format=prepared.format,
                taken_at=exif.taken_at,
                camera_make=exif.camera_make,
                camera_model=exif.camera_model,
                gps_lat=exif.gps_lat,
                gps_lon=exif.gps_lon,
                duration_s=getattr(prepared, "duration_s", None),
            )
        columns = ", ".join(values)
        marks = ", ".join("?" * len(values))
        updates = ", ".join(f"{c} = excluded.{c}" for c in values if c != "path")
        _, rows = self._write(
            f"INSERT INTO images ({columns}) VALUES ({marks}) "
            f"ON CONFLICT(path) DO UPDATE SET {updates} RETURNING id",
            tuple(values.values()),
        )
        return rows[0][0]

    def save_caption(
        self,
        *,
        image_id: int,
        run_id: int,
        model: str,
        prompt: str,
        result: CaptionResult,
        system: str | None = None,
        options_json: str | None = None,
        max_side: int | None = None,
        recipe: str | None = None,
        schema_json: str | None = None,
        cost_usd: float | None = None,
        price_in_per_m: float | None = None,
        price_out_per_m: float | None = None,
        duration_ms: int | None = None,
        estimated_input_tokens: int | None = None,
    ) -> int:
        fields = {
            "image_id": image_id, "run_id": run_id, "model": model, "prompt": prompt,
            "cost_usd": cost_usd, "price_in_per_m": price_in_per_m, "price_out_per_m": price_out_per_m,
            "duration_ms": duration_ms, "estimated_input_tokens": estimated_input_tokens,
            "system": system, "options_json": options_json, "max_side": max_side, "recipe": recipe,
            "schema_json": schema_json,
        }
        with self._immediate() as conn:
            return self._insert_caption(conn, result=result, **fields)

    def _insert_caption(self, conn: sqlite3.Connection, *, result: CaptionResult, **fields: Any) -> int:
        """One caption row (and its keywords as `tags` rows), inside the caller's transaction."""
        keywords = keywords_of(result.data)
        row = {**fields, "caption": result.text, "status": result.status, "error": result.error,
               "input_tokens": result.input_tokens, "output_tokens": result.output_tokens,
               "reasoning_tokens": result.reasoning_tokens, "created_at": utcnow(),
               "usage_json": json.dumps(result.usage) if result.usage is not None else None,
               "data_json": json.dumps(result.data, ensure_ascii=False) if result.data is not None else None,
               "title": title_of(result.data), "alt_text": alt_text_of(result.data),
               "keywords": ", ".join(keywords) or None}
        columns = ", ".join(row)
        marks = ", ".join("?" * len(row))
        caption_id = conn.execute(f"INSERT INTO captions ({columns}) VALUES ({marks})",
                                  tuple(row.values())).lastrowid or 0
        conn.executemany("INSERT INTO tags (caption_id, image_id, tag) VALUES (?, ?, ?)",
                         [(caption_id, row["image_id"], tag) for tag in keywords])
        return caption_id

    def start_run(self, model: str, prompt: str, options: dict[str, Any]) -> int:
        self._close_abandoned_runs()
        return self._write(
            "INSERT INTO runs (started_at, model, prompt, options_json, status, pid) VALUES (?, ?, ?, ?, ?, ?)",
            (utcnow(), model, prompt, json.dumps(options, sort_keys=True), "running", os.getpid()),
        )[0]

    def finish_run(self, run_id: int, status: str, images_total: int,
                   endpoints: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record how the run ended, with totals taken from its caption rows."""
        totals = self.run_totals(run_id)
        if endpoints:
            self._write("UPDATE runs SET endpoints_json = ? WHERE id = ?", (json.dumps(endpoints), run_id))
        self._write(
            """UPDATE runs SET finished_at = ?, status = ?, images_total = ?, images_ok = ?,
               images_failed = ?, input_tokens = ?, output_tokens = ?, cost_usd = ? WHERE id = ?""",
            (
                utcnow(), status, images_total, totals["ok"], totals["failed"],
                totals["input_tokens"], totals["output_tokens"], totals["cost_usd"], run_id,
            ),
        )
        return totals

    def run_totals(self, run_id: int) -> dict[str, Any]:
        row = self.conn.execute(
            f"""SELECT count(*),
                      coalesce(sum(status = 'ok'), 0),
                      coalesce(sum(status IN ('failed', 'malformed')), 0),
                      coalesce(sum(status IN ('refused', 'blocked')), 0),
                      coalesce(sum(input_tokens), 0),
                      coalesce(sum(output_tokens), 0),
                      coalesce(sum(cost_usd), 0.0),
                      coalesce(sum({UNPRICED}), 0)
               FROM captions c WHERE run_id = ?""",
            (run_id,),
        ).fetchone()
        keys = ("captions", "ok", "failed", "refused", "input_tokens", "output_tokens", "cost_usd", "unpriced")
        return dict(zip(keys, row))

    def _close_abandoned_runs(self) -> None:
        """A run still marked `running` whose process is gone was killed."""
        for run_id, pid in self.conn.execute("SELECT id, pid FROM runs WHERE status = 'running'").fetchall():
            if pid and _pid_alive(pid) and pid != os.getpid():
                continue
            self.finish_run(run_id, "killed", self.run_totals(run_id)["captions"])

    # -- provider batch jobs ---------------------------------------------

    def create_batch_job(self, tag: str, provider: str, model: str, recipe: str, run_id: int) -> int:
        return self._write(
            "INSERT INTO batch_jobs (tag, provider, model, recipe, status, run_id, created_at) "
            "VALUES (?, ?, ?, ?, 'building', ?, ?)",
            (tag, provider, model, recipe, run_id, utcnow()),
        )[0]

    def add_batch_item(self, job_id: int, custom_id: str, image_id: int, sha256: str, recipe: dict[str, Any],
                       estimated: int | None) -> None:
        """One photo in a job, with the recipe its caption row will carry."""
        self._write(
            "INSERT INTO batch_items (job_id, custom_id, image_id, sha256, recipe, recipe_json, status, "
            "estimated_input_tokens) VALUES (?, ?, ?, ?, ?, ?, 'submitted', ?)",
            (job_id, custom_id, image_id, sha256, recipe["recipe"], json.dumps(recipe), estimated),
        )

    def update_batch_job(self, job_id: int, **fields: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in fields)
        self._write(f"UPDATE batch_jobs SET {columns} WHERE id = ?", (*fields.values(), job_id))

    def batch_jobs(self, ids: list[int] | None = None, open_only: bool = False) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        if ids:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            params += ids
        if open_only:
            where.append(f"status IN ({','.join('?' * len(OPEN_JOB_STATUSES))})")
            params += OPEN_JOB_STATUSES
        sql = "SELECT * FROM batch_jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return list(self.query(sql, params))

    def batch_items(self, job_id: int) -> list[dict[str, Any]]:
        return list(self.query(
            """SELECT b.*, i.path FROM batch_items b JOIN images i ON i.id = b.image_id
               WHERE b.job_id = ? ORDER BY b.id""", (job_id,)))

    def batch_item_by_custom_id(self, custom_id: str) -> dict[str, Any] | None:
        """An item of an exported batch file, by the custom id its line carries."""
        return next(iter(self.query(
            """SELECT b.*, j.run_id, j.model FROM batch_items b JOIN batch_jobs j ON j.id = b.job_id
               WHERE b.custom_id = ? AND j.provider = 'batch-file'""", (custom_id,))), None)

    def reserved_in_open_jobs(self) -> float:
        row = self.conn.execute(
            f"SELECT coalesce(sum(reserved_usd), 0) FROM batch_jobs WHERE status IN "
            f"({','.join('?' * len(OPEN_JOB_STATUSES))})", OPEN_JOB_STATUSES).fetchone()
        return float(row[0])

    def settle_batch_item(self, item_id: int, status: str, caption: dict[str, Any] | None) -> bool:
        """Record one item's outcome, and its caption, in one transaction; False if it
        was settled before (collecting twice never stores a caption twice)."""
        with self._immediate() as conn:
            current = conn.execute("SELECT status FROM batch_items WHERE id = ?", (item_id,)).fetchone()
            if current is None or current[0] != "submitted":
                return False
            caption_id = None
            if caption is not None:
                caption_id = self._insert_caption(conn, **caption)
            conn.execute("UPDATE batch_items SET status = ?, caption_id = ? WHERE id = ?",
                         (status, caption_id, item_id))
            return True

    # -- judgements --------------------------------------------------------

    def judgement(self, a: int, b: int, judge: str, prompt: str, order: str) -> dict[str, Any] | None:
        return next(iter(self.query(
            'SELECT * FROM judgements WHERE caption_a_id = ? AND caption_b_id = ? AND judge_model = ? '
            'AND judge_prompt = ? AND "order" = ?', (a, b, judge, prompt, order))), None)

    def save_judgement(self, row: dict[str, Any]) -> None:
        columns = ", ".join(f'"{c}"' for c in row)
        self._write(f"INSERT OR IGNORE INTO judgements ({columns}) VALUES ({', '.join('?' * len(row))})",
                    tuple(row.values()))

    # -- recovery: answers the database could not take -------------------

    def keep_for_recovery(self, record: dict[str, Any]) -> Path | None:
        """Append one unstored record (a caption, or how a run ended) to a
        recovery file. Returns where it went, or None if no disk would take it."""
        line = json.dumps(record, default=str) + "\n"
        for target in recovery_paths(self.path):
            try:
                with open(target, "a", encoding="utf-8") as fh:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
                return target
            except OSError:
                continue
        return None

    def _replay_recovery(self) -> None:
        """Store what an earlier run kept in a recovery file, then remove the file."""
        for source in recovery_paths(self.path):
            try:
                lines = source.read_text(encoding="utf-8").splitlines()
            except OSError:
                continue  # none there
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by the full disk
                if record.get("kind") == "caption":
                    image_id = self.save_image(record["path"], record["sha256"], record["size"], record["mtime"])
                    self.save_caption(image_id=image_id, result=CaptionResult(**record["result"]),
                                      **record["caption"])
                elif record.get("kind") == "run_end":
                    self.finish_run(record["run_id"], record["status"], record["images_total"])
            source.unlink()

    # -- queries for reports ---------------------------------------------

    def has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                 (name,)).fetchone() is not None

    def query(self, sql: str, params: Any = ()) -> Iterator[dict[str, Any]]:
        """Rows as dicts, one at a time (what sqlite-utils' `query` gives, without importing it at start-up)."""
        cursor = self.conn.execute(sql, params)
        columns = [d[0] for d in cursor.description or []]
        for row in cursor:
            yield dict(zip(columns, row))


def _retry_while_locked(action, seconds: float = BUSY_TIMEOUT_MS / 1000) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05 + random.random() * 0.1)


def _expired(claimed_at: str) -> bool:
    """A claim older than any request can take: its process died and the pid
    was reused, or it hangs. Either way the photo is free again."""
    try:
        age = datetime.now(timezone.utc) - datetime.fromisoformat(claimed_at)
    except (TypeError, ValueError):
        return True
    return age.total_seconds() > CLAIM_TTL_SECONDS


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True
