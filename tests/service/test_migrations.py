"""Schema migrations: a pre-migration data directory adopted at start, ``mcnc db upgrade``, and a
shared database whose schema is out of date refused with a message naming the fix."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.errors import SchemaOutOfDateError
from service.storage import MetadataStore, commit_id, migrate

ROOT = Path(__file__).resolve().parents[2]

# The schema servers created before migrations existed (service/storage.py, CREATE TABLE IF NOT EXISTS).
_LEGACY_SCHEMA = """
CREATE TABLE IF NOT EXISTS bundles (
  digest TEXT PRIMARY KEY, size INTEGER NOT NULL, num_params INTEGER NOT NULL,
  reconstructed_nbytes INTEGER NOT NULL, stored_numbers INTEGER NOT NULL, mode TEXT NOT NULL,
  base_sha256 TEXT, base_name TEXT, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bases (
  digest TEXT PRIMARY KEY, file_sha256 TEXT NOT NULL, size INTEGER NOT NULL,
  num_tensors INTEGER NOT NULL, num_params INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tags (
  name TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL REFERENCES bundles(digest),
  updated_at REAL NOT NULL, PRIMARY KEY (name, tag));
CREATE INDEX IF NOT EXISTS tags_digest ON tags(digest);
"""


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MCNC_")}
    clean.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "mcnc_core", *args], env=clean, capture_output=True, text=True, timeout=120
    )


def test_a_data_directory_from_before_migrations_keeps_working(tmp_path, tiny):
    data = tmp_path / "data"
    digest = hashlib.sha256(tiny.data).hexdigest()
    (data / "blobs" / "bundles").mkdir(parents=True)
    (data / "blobs" / "bundles" / digest).write_bytes(tiny.data)
    db = sqlite3.connect(data / "mcnc.sqlite3")
    db.executescript(_LEGACY_SCHEMA)
    b = tiny.bundle
    db.execute(
        "INSERT INTO bundles VALUES (?,?,?,?,?,?,?,?,?)",
        (digest, len(tiny.data), b.num_params, b.reconstructed_nbytes, b.stored_numbers, "full", None, None, 1.0),
    )
    db.execute("INSERT INTO tags VALUES ('old', 'v1', ?, 2.0)", (digest,))
    db.commit()
    db.close()
    with TestClient(create_app(Settings(data_dir=data))) as c:
        assert c.get("/bundles/old:v1").content == tiny.data
        assert c.get("/models/old:v1/weights").status_code == 200
        assert c.post("/bundles", params={"name": "old", "tag": "v2"}, content=tiny.data).status_code == 200
    engine = sa.create_engine(f"sqlite:///{data / 'mcnc.sqlite3'}")
    with engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
        # 0004 backfilled the Hub commit id of the old row (no files: the digest alone).
        row = conn.execute(sa.text("SELECT \"commit\" FROM tags WHERE name = 'old' AND tag = 'v1'")).one()
        assert row[0] == commit_id(digest, [])
    engine.dispose()


def test_a_shared_database_must_be_upgraded_first(tmp_path):
    from tests.service._backends import fresh_postgres_database

    with fresh_postgres_database() as url:
        with pytest.raises(SchemaOutOfDateError, match="run `mcnc db upgrade`"):
            MetadataStore(url, auto_upgrade=False)
        served = _cli("serve", "--port", "1", env={"MCNC_DATABASE_URL": url, "MCNC_DATA_DIR": str(tmp_path)})
        assert served.returncode == 2 and "mcnc db upgrade" in served.stderr, served.stderr
        first = _cli("db", "upgrade", env={"MCNC_DATABASE_URL": url})
        assert first.returncode == 0, first.stderr
        assert f"upgraded from an empty database to revision {migrate.head_revision()}" in first.stdout
        assert "already at revision" in _cli("db", "upgrade", "--database-url", url).stdout
        MetadataStore(url, auto_upgrade=False).close()


def test_a_schema_newer_than_the_server_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    MetadataStore(url, auto_upgrade=True).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    for auto in (True, False):
        with pytest.raises(SchemaOutOfDateError, match="migrated by a newer mcnc"):
            MetadataStore(url, auto_upgrade=auto)


def test_db_upgrade_reports_an_unreachable_database():
    out = _cli("db", "upgrade", "--database-url", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert out.returncode == 1 and out.stderr.startswith("mcnc db upgrade: OperationalError")
