"""A live server holding what the pages show, and one headless Chromium per module (Debian's
``/usr/bin/chromium`` driven by Playwright; ``scripts/ensure_chromium.sh`` installs it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save

import mcnc_core as m
from service import Settings
from tests._adapters import LoraDelta, lora_delta
from tests._live import LiveServer
from tests.conftest import make_mlp, train_steps

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'  # in metadata (and cards)
PAGED = [f"page/m{i}" for i in range(7)]


@dataclass
class Registry:
    url: str
    full: bytes
    lora: LoraDelta
    base_digest: str
    mlp_base: dict[str, torch.Tensor]


def _bundle(model: torch.nn.Module, **meta: str) -> bytes:
    return m.export_bundle(model, metadata=meta).to_bytes()


CARD = "# The acme MLP\n\nTrained on *mnist1d*.\n\n" + HOSTILE + "\n"  # README.md of acme/mlp:v2


def _push(url: str, data: bytes, name: str, tag: str, files: tuple[str, ...] = (), **headers: str) -> None:
    params = [("name", name), ("tag", tag)] + [("file", f) for f in files]
    r = httpx.post(f"{url}/bundles", params=params, content=data, timeout=60,
                   headers={"Content-Type": "application/octet-stream", **headers})  # fmt: skip
    assert r.status_code in (200, 201), r.text


def _sidecar(url: str, name: str, data: bytes, **headers: str) -> str:
    """Upload one sidecar file (``POST /files``); the ``file=`` value that attaches it to a push."""
    r = httpx.post(f"{url}/files", content=data, timeout=60,
                   headers={"Content-Type": "application/octet-stream", **headers})  # fmt: skip
    assert r.status_code in (200, 201), r.text
    return f"{name}:{r.json()['sha256']}"


def fill(url: str, **headers: str) -> Registry:
    """A full-mode model, a delta with its base registered, an adapter delta without its base, and
    more names for the pages to page through."""
    cfg = dict(k=4, chunk_size=64, width=16, depth=2, bound=5.0, seed=7)
    full = make_mlp(sizes=(16, 96, 64, 4))
    m.compress(full, m.MCNCConfig(**cfg))
    train_steps(full)
    full_bytes = _bundle(full, **{"x-note": HOSTILE, "x-dataset": "mnist1d"})
    _push(url, full_bytes, "acme/mlp", "v1", **headers)
    card = _sidecar(url, "README.md", CARD.encode(), **headers)
    _push(url, full_bytes, "acme/mlp", "v2", (card,), **headers)
    ft = make_mlp(seed=1, sizes=(16, 96, 64, 4))
    base = {k: v.clone() for k, v in ft.state_dict().items()}
    m.compress(ft, m.MCNCConfig(mode="delta", base_name="mlp-base", **cfg))
    train_steps(ft)
    r = httpx.post(f"{url}/bases", content=save(base), timeout=60,
                   headers={"Content-Type": "application/octet-stream", **headers})  # fmt: skip
    assert r.status_code in (200, 201), r.text
    _push(url, _bundle(ft), "team/mlp-ft", "v1", **headers)
    lora = lora_delta()
    _push(url, lora.bundle.to_bytes(), "acme/llama-lora", "v1", **headers)
    # vLLM and LoRAX fetch `main`: the tag named main, else the most recent push (this one; and
    # `latest`, the default tag, where the server still maps main to it)
    _push(url, lora.bundle.to_bytes(), "acme/llama-lora", "latest", **headers)
    for name in PAGED:
        _push(url, full_bytes, name, "latest", **headers)
    return Registry(url, full_bytes, lora, r.json()["digest"], base)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    data = tmp_path_factory.mktemp("ui-server")
    with LiveServer(Settings(data_dir=data, redis_url=None)) as srv:
        yield fill(srv.url)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: run scripts/ensure_chromium.sh (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


@dataclass
class Watched:
    """A page whose dialogs, console errors and requests are recorded."""

    page: object
    dialogs: list[str]
    errors: list[str]
    requests: list[str]


@pytest.fixture
def watched(browser: object, registry: Registry) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    w = Watched(page, [], [], [])
    page.on("dialog", lambda d: (w.dialogs.append(d.message), d.dismiss()))
    page.on("console", lambda msg: w.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: w.errors.append(str(exc)))
    page.on("request", lambda req: w.requests.append(req.url))
    yield w
    context.close()


def screenshot(page: object, name: str) -> None:
    """Into ``$MCNC_UI_SCREENSHOTS`` (docs/screenshots when refreshing them) when it is set."""
    folder = os.environ.get("MCNC_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))  # the viewport: < 200 kB  # type: ignore[attr-defined]


__all__ = ["HOSTILE", "PAGED", "Registry", "Watched", "fill", "screenshot"]
