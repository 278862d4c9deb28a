"""One ref grammar (``mcnc_core.refs``) for client and server; ``import mcnc_core`` stays torch-free."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mcnc_core
from client import _base
from mcnc_core.refs import Ref, parse_ref
from service import storage
from service.errors import InvalidRequestError

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (f"sha256:{HEX.upper()}", Ref(digest=HEX)),  # the client used to read this as name 'sha256'
        (f"SHA256:{HEX}", Ref(digest=HEX)),
        (HEX.upper(), Ref(digest=HEX)),
        ("mlp", Ref(name="mlp", tag="latest")),
        ("acme/lora:v2", Ref(name="acme/lora", tag="v2")),
        ("mlp:_rc1", Ref(name="mlp", tag="_rc1")),  # tags may start with '_' (the server's rule)
    ],
)
def test_client_and_server_parse_alike(text, want):
    assert parse_ref(text) == _base.parse_ref(text) == storage.parse_ref(text) == want


@pytest.mark.parametrize("text", ["../x", "a/b/c", "mlp:", "sha256:abc", "resolve", "x:-y", ""])
def test_malformed_refs_fail_in_both(text):
    with pytest.raises(mcnc_core.RefError):
        parse_ref(text)
    with pytest.raises(InvalidRequestError):
        storage.parse_ref(text)


def test_canonical_form_spells_out_the_tag():
    assert str(parse_ref("acme/weights")) == "acme/weights:latest"
    assert str(parse_ref(HEX)) == f"sha256:{HEX}"


def test_import_mcnc_core_is_light_and_names_stay_functions():
    code = (
        "import sys, mcnc_core, mcnc_core.refs; light = 'torch' not in sys.modules\n"
        "import mcnc_core.compress, mcnc_core.reconstruct\n"
        "print(light, callable(mcnc_core.compress), callable(mcnc_core.reconstruct), mcnc_core.recipe.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "True", "mcnc_core.recipe"]
    assert sorted(mcnc_core._LAZY) == sorted(mcnc_core.__all__)
