"""PostgreSQL plumbing for the production storage path (``BIRDSDAO_DATABASE_URL``): one psycopg 3 connection
pool per process and URL, pgvector's types registered on every connection, and the migration runner that applies
``birdsdao/migrations/NNNN_name.sql`` in order, once, under an advisory lock (so several app servers starting at
once apply each file exactly once; the others wait, then find it done). Empty URL: the file store, no database.
"""
from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_MIGRATION_RE = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
# pg_advisory_lock keys (bigint): one per purpose, fixed, so every process agrees on them.
MIGRATION_LOCK = 0x42_44_41_4F_0001  # "BDAO" + 1
SPECIES_BUILD_LOCK = 0x42_44_41_4F_0002
TAUGHT_LOCK = 0x42_44_41_4F_0003

_pools: dict[str, object] = {}
_pools_lock = threading.Lock()


def _configure(conn) -> None:
    """Each new pooled connection: pgvector's ``vector`` type adapted to and from numpy arrays."""
    from pgvector.psycopg import register_vector

    register_vector(conn)
    conn.commit()  # register_vector runs a query; leave the connection idle, not in a transaction


def pool(url: str, *, min_size: int = 1, max_size: int = 8):
    """The process's pool for ``url`` (created, opened and migrated on first use). The ``vector`` extension and
    the schema exist before the first pooled connection registers the type (hence migrate first)."""
    if not url:
        raise ValueError("no database URL (BIRDSDAO_DATABASE_URL is empty: the file store is in use)")
    with _pools_lock:
        existing = _pools.get(url)
        if existing is not None:
            return existing
        from psycopg_pool import ConnectionPool

        migrate(url)
        created = ConnectionPool(url, min_size=min_size, max_size=max_size, configure=_configure, open=False,
                                 name="birdsdao")
        created.open(wait=True, timeout=30)
        _pools[url] = created
        return created


def close_pools() -> None:
    """Close every pool of this process (tests; a forked worker must not share its parent's sockets)."""
    with _pools_lock:
        for p in _pools.values():
            p.close()
        _pools.clear()


def migrations(folder: Path = MIGRATIONS_DIR) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration file, in version order; a stray name is an error, not skipped."""
    out = []
    for path in sorted(folder.glob("*.sql")):
        m = _MIGRATION_RE.fullmatch(path.name)
        if not m:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_name.sql")
        out.append((int(m.group(1)), path.name, path.read_text("utf-8")))
    versions = [v for v, _, _ in out]
    if len(set(versions)) != len(versions):
        raise ValueError("two migration files share a version number")
    return out


def migrate(url: str, folder: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not yet recorded in ``schema_migrations``, each in its own transaction together with
    its record, under a session advisory lock. Returns the names applied now (empty when up to date)."""
    import psycopg

    applied_now = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         " version integer PRIMARY KEY, name text NOT NULL,"
                         " applied_at timestamptz NOT NULL DEFAULT now())")
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations(folder):
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                applied_now.append(name)
                log.info("database migration applied: %s", name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied_now


@contextmanager
def advisory_lock(url: str, key: int):
    """A session advisory lock on its own connection (not the pool's: a long hold must not starve requests),
    across every process on this database. Waits until it is free."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
