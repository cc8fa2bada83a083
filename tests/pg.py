"""A real PostgreSQL 16 + pgvector for the tests, started by the ``pgserver`` wheel in a temporary folder (no
root, no system service) once per session. Use it with ``from tests.pg import pg_url`` in a test module (or
conftest); the fixture yields the server's ``postgresql://`` URL. Skips, saying why, only when pgserver cannot
start a server here."""
from __future__ import annotations

import shutil
import tempfile
import uuid
import warnings

import pytest


@pytest.fixture(scope="session")
def pg_server():
    try:
        with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset (CI, containers)
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        pytest.skip(f"pgserver is not installed ({exc}); pip install -r requirements-dev.txt")
    folder = tempfile.mkdtemp(prefix="birdsdao-pg-")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(folder, cleanup_mode="stop")
        server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    except Exception as exc:  # noqa: BLE001 - any failure to start is the reason to skip, told in full
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"pgserver could not start PostgreSQL here: {type(exc).__name__}: {exc}")
    try:
        yield server
    finally:
        from birdsdao import db

        db.close_pools()
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg_server) -> str:
    """The URL of the session's server (database ``postgres``)."""
    return pg_server.get_uri()


@pytest.fixture
def pg_db(pg_server) -> str:
    """A fresh empty database on the session's server, for a test that must start from nothing: its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name};")
    base = pg_server.get_uri()
    yield base.replace("/postgres?", f"/{name}?", 1)
