"""Rate limits: keyed on the authenticated identity (issue 11 D7), shared by replicas through Redis,
counted locally while Redis fails."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.errors import RateLimitedError
from service.ratelimit import RateLimiter
from tests.service._helpers import error_code

TOKENS = {"r-token": ["read"]}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_made_up_tokens_count_against_the_address(tmp_path):
    s = Settings(data_dir=tmp_path, api_tokens=json.dumps(TOKENS), rate_limit=0.5, rate_limit_burst=3)
    with TestClient(create_app(s)) as c:
        codes = [c.get("/models", headers=_auth(f"made-up-{i}")).status_code for i in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        assert c.get("/models", headers=_auth("r-token")).status_code == 200  # a real token has its own allowance


def test_two_replicas_share_one_limit(tmp_path, redis_url):
    url, prefix = redis_url
    apps = [
        create_app(Settings(data_dir=tmp_path / f"r{i}", redis_url=url, redis_prefix=prefix, rate_limit=0.5,
                            rate_limit_burst=3))
        for i in range(2)
    ]  # fmt: skip
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        codes = [c.get("/models").status_code for c in (a, b, a, b, a)]
        assert codes == [200, 200, 200, 429, 429]
        r = b.get("/models")
        assert error_code(r) == "rate_limited" and r.headers["ratelimit-policy"] == "3;w=6"


def test_without_redis_each_process_counts_alone(tmp_path):
    apps = [create_app(Settings(data_dir=tmp_path / f"r{i}", rate_limit=0.5, rate_limit_burst=2)) for i in range(2)]
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        assert [c.get("/models").status_code for c in (a, b, a, b, a)] == [200, 200, 200, 200, 429]


def test_redis_down_falls_back_to_local_counting(caplog):
    limiter = RateLimiter(1.0, 2, redis_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    limiter.check("ip:x")
    limiter.check("ip:x")
    with pytest.raises(RateLimitedError) as info:
        limiter.check("ip:x")
    assert int(info.value.headers["Retry-After"]) >= 1
    assert "counting in this process" in caplog.text
