"""Generate ``client/_sync.py`` (``Client``) from ``client/_async.py`` (``AsyncClient``), and
``client/_sync_repo.py`` (``RepoMixin``) from ``client/_async_repo.py`` (``AsyncRepoMixin``), as httpcore does.

The async files are the one implementation of the request flow; this script rewrites them token by
token (``async def`` -> ``def``, ``await x`` -> ``x``, httpx's async names -> sync names, the
``client._io`` helpers ``ablocking``/``alock``/``asleep`` -> ``blocking``/``lock``/``sleep``).

    python scripts/unasync.py           # rewrite client/_sync.py and client/_sync_repo.py
    python scripts/unasync.py --check   # exit 1 if either is stale (the test suite runs this)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = "# Generated from client/{source} by scripts/unasync.py (make unasync): do not edit.\n"
DOCSTRINGS = {
    "_sync.py": '''"""``Client``: the synchronous MCNC client, generated from ``AsyncClient`` (``client/_async.py``).

Edit ``client/_async.py`` and run ``make unasync``: the two clients differ only in I/O.
"""
''',
    "_sync_repo.py": '''"""``RepoMixin``: ``Client``'s uploads and records, generated from ``AsyncRepoMixin``
(``client/_async_repo.py``).

Edit ``client/_async_repo.py`` and run ``make unasync``: the two differ only in I/O.
"""
''',
}
PAIRS = [(ROOT / "client" / "_async.py", ROOT / "client" / "_sync.py"),
         (ROOT / "client" / "_async_repo.py", ROOT / "client" / "_sync_repo.py")]  # fmt: skip
SOURCE, TARGET = PAIRS[0]

# (pattern, replacement), applied in order; \b keeps identifiers whole.
SUBS: list[tuple[str, str]] = [
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\bAsyncClient\b", "Client"),
    (r"\bAsyncRepoMixin\b", "RepoMixin"),
    (r"\bclient\._async_repo\b", "client._sync_repo"),
    (r"\bAsyncBaseTransport\b", "BaseTransport"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baiter_bytes\b", "iter_bytes"),
    (r"\baread\b", "read"),
    (r"\baclose\b", "close"),
    (r"\bablocking\b", "blocking"),
    (r"\balock\b", "lock"),
    (r"\basleep\b", "sleep"),
    (r"\basynchronous\b", "synchronous"),
]


def unasync(text: str, target: Path = TARGET) -> str:
    """The sync source for the async source ``text``, formatted as ``ruff format`` would."""
    if not text.startswith('"""'):
        raise ValueError("client/_async*.py must start with its module docstring")
    text = text[text.index('"""', 3) + 4 :]
    for pattern, replacement in SUBS:
        text = re.sub(pattern, replacement, text)
    text = DOCSTRINGS[target.name] + text
    header = HEADER.format(source=target.name.replace("_sync", "_async"))
    # Renamed modules sort elsewhere (client._async_repo -> client._sync_repo): re-sort the imports, then format.
    sorted_ = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "I", "--fix-only", "--exit-zero", "--quiet",
         "--stdin-filename", str(target), "-"],
        input=header + text, capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    formatted = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(target), "-"],
        input=sorted_.stdout, capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return formatted.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if client/_sync.py is not up to date")
    args = parser.parse_args(argv)
    stale = 0
    for source, target in PAIRS:
        want = unasync(source.read_text(), target)
        if not args.check:
            target.write_text(want)
        elif not target.exists() or target.read_text() != want:
            print(f"{target.relative_to(ROOT)} is stale: run python scripts/unasync.py", file=sys.stderr)
            stale = 1
    return stale


if __name__ == "__main__":
    sys.exit(main())
