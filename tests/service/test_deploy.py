"""What the containers run, checked without Docker (no engine here): the compose file's settings are
real settings, its commands parse as ``mcnc`` commands, and nginx balances exactly the replicas."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from mcnc_core.cli import build_parser
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
REPLICAS = sorted(name for name, svc in SERVICES.items() if name.startswith("replica-"))


def _image_cmd() -> list[str]:
    line = next(ln for ln in (ROOT / "docker" / "Dockerfile").read_text().splitlines() if ln.startswith("CMD "))
    return yaml.safe_load(line[4:])


def test_every_mcnc_variable_is_a_setting():
    fields = set(Settings.model_fields)
    for name, svc in SERVICES.items():
        for var in svc.get("environment") or {}:
            if var.startswith("MCNC_") and var not in ("MCNC_LB_PORT",):
                assert var[5:].lower() in fields, f"{name}: {var} is not a server setting"


def test_commands_are_mcnc_commands():
    assert _image_cmd() == ["mcnc", "serve", "--host", "0.0.0.0"]
    assert SERVICES["migrate"]["command"] == ["mcnc", "db", "upgrade"]
    parser = build_parser()
    for cmd in (_image_cmd(), SERVICES["migrate"]["command"]):
        assert parser.parse_args(cmd[1:]).func is not None
    for name in REPLICAS:  # replicas run the image's command against the migrated, shared stores
        assert "command" not in SERVICES[name]
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("replica", REPLICAS)
def test_replicas_share_the_stores(replica):
    env = SERVICES[replica]["environment"]
    assert env == SERVICES["migrate"]["environment"]
    assert make_url(env["MCNC_DATABASE_URL"].replace("${POSTGRES_PASSWORD}", "pw")).drivername == "postgresql+psycopg"
    assert env["MCNC_BLOB_URL"].startswith("s3://") and env["MCNC_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["MCNC_REDIS_URL"] == "redis://redis:6379/0"
    assert SERVICES[replica]["volumes"][0].endswith(":/data")  # staging and local base copies: per replica


def test_replicas_keep_their_local_data_apart():
    volumes = [SERVICES[r]["volumes"][0].split(":")[0] for r in REPLICAS]
    assert len(set(volumes)) == len(REPLICAS) and all(v in COMPOSE["volumes"] for v in volumes)


def test_nginx_balances_exactly_the_replicas():
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    assert sorted(re.findall(r"server (replica-\d+):8000", conf)) == REPLICAS and len(REPLICAS) == 2
    listen = re.search(r"listen (\d+);", conf)
    assert listen is not None and SERVICES["lb"]["ports"] == [f"${{MCNC_LB_PORT:-8080}}:{listen.group(1)}"]
    limit = re.search(r"client_max_body_size (\d+)g;", conf)
    assert limit is not None and int(limit.group(1)) << 30 == Settings.model_fields["max_upload_bytes"].default
