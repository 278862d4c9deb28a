"""Real backing services for the store tests: a fresh PostgreSQL database per run, an S3 server on loopback.

PostgreSQL is the server at ``MCNC_TEST_POSTGRES_URL`` (default the local one, which
``scripts/ensure_postgres.sh`` starts where none answers). The S3 server is moto's
``ThreadedMotoServer``: it speaks the S3 REST protocol (multipart uploads, Range GETs) to a real
boto3 client, standing in for AWS S3 or MinIO, which cannot run here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
import psycopg
import pytest
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get("MCNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the test server (its SQLAlchemy URL), dropped afterwards; skips without a server."""
    try:
        admin = psycopg.connect(_libpq(ADMIN_URL), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {ADMIN_URL} (run scripts/ensure_postgres.sh): {exc}")
    name = f"mcnc_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port (its endpoint URL), with test credentials in the environment."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def new_bucket(endpoint: str) -> str:
    """Create an empty bucket on ``endpoint``; its name."""
    name = f"mcnc-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=name)
    client.close()
    return name
