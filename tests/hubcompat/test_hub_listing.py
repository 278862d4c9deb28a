"""The Hub listing routes (``/api/models``, ``/refs``, ``/commits``) over real HTTP on loopback: the main
venv's huggingface_hub (2.x), each older version in its own venv (``_venvs.py``), and vLLM's Hub LoRA
loading replayed on 0.36.2 (the newest 0.x)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import huggingface_hub
import pytest

from service import Settings
from service.storage import BaseRecord, commit_id
from tests._adapters import LoraDelta, lora_delta
from tests._hubenv import hub_child_env
from tests._live import LiveServer
from tests.hubcompat._venvs import VERSIONS, hub_python

pytestmark = pytest.mark.e2e
HERE = Path(__file__).parent
PAGE = 2  # MCNC_HUB_PAGE_SIZE here: a handful of repos spans several pages


@pytest.fixture(scope="module")
def case() -> LoraDelta:
    return lora_delta()


@pytest.fixture(scope="module")
def other() -> LoraDelta:
    return lora_delta(seed=1)


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    with LiveServer(Settings(data_dir=tmp_path / "server", hub_page_size=PAGE)) as srv:
        yield srv


def push(live: LiveServer, data: bytes, name: str, tag: str) -> str:
    r = httpx.post(f"{live.url}/bundles", params={"name": name, "tag": tag}, content=data, timeout=60)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def fill(live: LiveServer, case: LoraDelta, other: LoraDelta) -> dict[str, str]:
    """Five bundle repos (acme/* twice tagged) and a named base; digests by name:tag."""
    a, b = case.bundle.to_bytes(), other.bundle.to_bytes()
    out = {}
    for name, tag, data in [("acme/alpha", "v1", a), ("acme/beta", "v1", a), ("acme/beta", "v2", b),
                            ("acme/gamma", "v1", b), ("zeta/acme-fork", "v1", a), ("solo", "v1", b)]:  # fmt: skip
        out[f"{name}:{tag}"] = push(live, data, name, tag)
        time.sleep(0.01)  # distinct push times: "main" = the newest push
    # A base registered under a repo name (what `mcnc push-base --name` records): metadata only here,
    # the listing reads no blob.
    meta = live.app.state.store.meta
    meta.add_base(BaseRecord("b" * 64, "c" * 64, 10, 1, 5, time.time()), before_commit=lambda: None)
    meta.set_base_name("acme/base", "b" * 64, {})
    return out


def test_list_models_paginates_with_link_search_author_and_parses_on_2x(live, case, other):
    digests = fill(live, case, other)
    api = huggingface_hub.HfApi(endpoint=live.url, token=False)
    before = live.requests("/api/models")
    found = list(api.list_models(search="acme"))  # 5 matches, pages of 2: paginate() follows 2 Links
    assert live.requests("/api/models") - before == 3
    assert [m.id for m in found] == ["acme/alpha", "acme/base", "acme/beta", "acme/gamma", "zeta/acme-fork"]
    by_id = {m.id: m for m in found}
    assert by_id["acme/beta"].sha == commit_id(digests["acme/beta:v2"], [])  # main = the newest push
    assert by_id["acme/alpha"].library_name == "peft" and "lora" in by_id["acme/alpha"].tags
    assert by_id["acme/base"].library_name == "transformers"
    assert by_id["acme/alpha"].downloads == 0 and by_id["acme/alpha"].private is False
    assert by_id["acme/alpha"].last_modified is not None
    assert [m.id for m in api.list_models(author="acme")] == ["acme/alpha", "acme/base", "acme/beta", "acme/gamma"]
    assert [m.id for m in api.list_models(search="ACME-F")] == ["zeta/acme-fork"]  # any case
    assert [m.id for m in api.list_models(limit=3)] == ["acme/alpha", "acme/base", "acme/beta"]
    assert list(api.list_models(search="nothing-like-this")) == []
    everything = [m.id for m in api.list_models()]
    assert everything == sorted(everything) and len(everything) == 6


def test_link_header_cursor_direction_and_bad_inputs(live, case, other):
    fill(live, case, other)
    r = httpx.get(f"{live.url}/api/models", params={"direction": -1})
    assert r.status_code == 200 and [m["id"] for m in r.json()] == ["zeta/acme-fork", "solo"]
    link = r.headers["link"]
    assert link.startswith(f"<{live.url}/api/models?") and link.endswith('>; rel="next"')
    nxt = httpx.get(link[1 : link.index(">")])
    assert [m["id"] for m in nxt.json()] == ["acme/gamma", "acme/beta"]
    for params, needle in [
        ({"sort": "lastModified"}, "sort='lastModified' is not supported"),
        ({"cursor": "not-a-cursor"}, "is not a cursor this server issued"),
        ({"cursor": "eyJ4IjoxfQ"}, "is not a listing cursor"),  # {"x":1}
        ({"filter": "peft"}, "filter= is not supported"),
        ({"direction": 2}, "direction=2"),
        ({"author": "acme/alpha"}, "give the org alone"),
    ]:
        bad = httpx.get(f"{live.url}/api/models", params=params)
        assert bad.status_code == 400 and needle in bad.json()["error"], (params, bad.text)
        assert bad.headers["x-error-message"]
    assert httpx.get(f"{live.url}/api/models", params={"limit": 0}).status_code == 422
    # the last page has no Link
    last = httpx.get(f"{live.url}/api/models", params={"author": "zeta"})
    assert [m["id"] for m in last.json()] == ["zeta/acme-fork"] and "link" not in last.headers


def test_refs_and_commits_on_2x(live, case, other):
    digests = fill(live, case, other)
    api = huggingface_hub.HfApi(endpoint=live.url, token=False)
    v1, v2 = commit_id(digests["acme/beta:v1"], []), commit_id(digests["acme/beta:v2"], [])
    refs = api.list_repo_refs("acme/beta")
    assert [(b.name, b.ref, b.target_commit) for b in refs.branches] == [("main", "refs/heads/main", v2)]
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [
        ("v1", "refs/tags/v1", v1),
        ("v2", "refs/tags/v2", v2),
    ]
    assert refs.converts == [] and api.list_repo_refs("acme/beta", include_pull_requests=True).pull_requests == []
    assert [t.name for t in api.list_repo_refs("solo").tags] == ["v1"]  # a one-segment repo id
    base = api.list_repo_refs("acme/base")
    assert base.tags == [] and base.branches[0].target_commit == commit_id("b" * 64, [])
    commits = api.list_repo_commits("acme/beta")  # main follows pushes: each commit it pointed at
    assert [c.commit_id for c in commits] == [v2, v1] and commits[0].created_at > commits[1].created_at
    assert commits[0].title == "acme/beta:v2" and digests["acme/beta:v2"] in commits[0].message
    assert [c.commit_id for c in api.list_repo_commits("acme/beta", revision="v1")] == [v1]  # a tag: its commit
    assert [c.commit_id for c in api.list_repo_commits("acme/beta", revision=v1)] == [v1]  # a commit pin
    exact = api.list_repo_commits("acme/beta", revision="main:float32")
    assert [c.commit_id for c in exact] == [v2[:39] + "1", v1[:39] + "1"]
    formatted = api.list_repo_commits("acme/beta", revision="v1", formatted=True)
    assert formatted[0].formatted_title == "acme/beta:v1"
    for repo in ("acme/beta", "acme/alpha", "acme/gamma"):  # commits of main paginate too (pages of 2)
        assert len(api.list_repo_commits(repo)) == len(api.list_repo_refs(repo).tags)
    with pytest.raises(huggingface_hub.errors.RepositoryNotFoundError):
        api.list_repo_refs("acme/nothing")
    with pytest.raises(huggingface_hub.errors.RevisionNotFoundError):
        api.list_repo_commits("acme/beta", revision="v9")


def test_commits_of_main_span_pages(live, case, other):
    for i in range(5):  # five distinct commits under one name: tags t0..t4, alternating contents
        push(live, (case if i % 2 else other).bundle.to_bytes(), "acme/many", f"t{i}")
        time.sleep(0.01)
    api = huggingface_hub.HfApi(endpoint=live.url, token=False)
    before = live.requests("/api/models/{org}/{name}/commits/{revision}")
    commits = api.list_repo_commits("acme/many")
    # two distinct digests; each commit listed once, at its newest push (t4's, then t3's)
    assert [c.title for c in commits] == ["acme/many:t0 (+2 more tags)", "acme/many:t1 (+1 more tag)"]
    assert live.requests("/api/models/{org}/{name}/commits/{revision}") - before == 2  # page of 2 + empty page


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return hub_child_env(tmp_path / "hf", **extra)


@pytest.mark.parametrize("version", VERSIONS)
def test_listing_parses_on_older_huggingface_hub(live, case, other, tmp_path, version):
    digests = fill(live, case, other)
    out = subprocess.run(
        [str(hub_python(version)), str(HERE / "replay_listing.py"), live.url, "acme", "acme/beta"],
        env=_clean_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ids"] == ["acme/alpha", "acme/base", "acme/beta", "acme/gamma", "zeta/acme-fork"]
    assert got["shas"][2] == commit_id(digests["acme/beta:v2"], [])
    assert got["first"]["downloads"] == 0 and got["first"]["library_name"] == "peft"
    v1, v2 = commit_id(digests["acme/beta:v1"], []), commit_id(digests["acme/beta:v2"], [])
    assert got["branches"] == [["main", "refs/heads/main", v2]]
    assert got["tags"] == [["v1", "refs/tags/v1", v1], ["v2", "refs/tags/v2", v2]]
    assert [c[0] for c in got["commits"]] == [v2, v1]


def test_vllm_hub_lora_sequence_on_huggingface_hub_0_36(live, case, tmp_path):
    """vLLM's ``--lora-modules a=acme/lora`` path and its Hub LoRA resolver (replay_vllm.py cites the
    files), endpoint from ``HF_ENDPOINT`` only, as a ``vllm serve`` process has it."""
    digest = push(live, case.bundle.to_bytes(), "acme/lora", "v1")
    adapter_config = httpx.get(f"{live.url}/acme/lora/resolve/main/adapter_config.json").json()
    out = subprocess.run(
        [str(hub_python(VERSIONS[-1])), str(HERE / "replay_vllm.py"), "acme/lora",
         adapter_config["base_model_name_or_path"], "acme/nothing"],
        env=_clean_env(tmp_path, HF_ENDPOINT=live.url), capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["path_is_snapshot"] and got["commit"] == commit_id(digest, [])
    assert got["r"] == 8 and got["scaling"] == adapter_config["lora_alpha"] / 8
    assert got["modules"] and all(m.startswith("model.") for m in got["modules"])
    assert got["task_type"] == "CAUSAL_LM"
    assert got["resolver"] is True and got["resolver_other_base"] is False
    assert got["missing"] == "acme/nothing"
