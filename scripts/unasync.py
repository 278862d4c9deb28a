"""Generate ``client/_sync.py`` (``Client``) from ``client/_async.py`` (``AsyncClient``), as httpcore does.

The async file is the one implementation of the request flow; this script rewrites it token by
token (``async def`` -> ``def``, ``await x`` -> ``x``, httpx's async names -> sync names, the
``client._io`` helpers ``ablocking``/``alock``/``asleep`` -> ``blocking``/``lock``/``sleep``).

    python scripts/unasync.py           # rewrite client/_sync.py
    python scripts/unasync.py --check   # exit 1 if client/_sync.py is stale (the test suite runs this)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE, TARGET = ROOT / "client" / "_async.py", ROOT / "client" / "_sync.py"
HEADER = "# Generated from client/_async.py by scripts/unasync.py (make unasync): do not edit.\n"
DOCSTRING = '''"""``Client``: the synchronous MCNC client, generated from ``AsyncClient`` (``client/_async.py``).

Edit ``client/_async.py`` and run ``make unasync``: the two clients differ only in I/O.
"""
'''

# (pattern, replacement), applied in order; \b keeps identifiers whole.
SUBS: list[tuple[str, str]] = [
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\bAsyncClient\b", "Client"),
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


def unasync(text: str) -> str:
    """The sync source for the async source ``text``, formatted as ``ruff format`` would."""
    if not text.startswith('"""'):
        raise ValueError("client/_async.py must start with its module docstring")
    text = text[text.index('"""', 3) + 4 :]
    for pattern, replacement in SUBS:
        text = re.sub(pattern, replacement, text)
    text = DOCSTRING + text
    formatted = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(TARGET), "-"],
        input=HEADER + text, capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return formatted.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if client/_sync.py is not up to date")
    args = parser.parse_args(argv)
    want = unasync(SOURCE.read_text())
    if args.check:
        if TARGET.read_text() != want:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python scripts/unasync.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(want)
    return 0


if __name__ == "__main__":
    sys.exit(main())
