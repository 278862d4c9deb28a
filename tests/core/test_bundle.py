"""Bundle format v1: round trips, determinism, golden files, and every malformed-input case."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import mcnc_core as m
from mcnc_core.safetensors_io import build_header, parse_header
from tests.conftest import make_mlp, train_steps

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture
def bundle(tiny_cfg) -> m.Bundle:
    model = m.compress(make_mlp(), tiny_cfg)
    train_steps(model)
    return m.export_bundle(model)


@pytest.fixture
def data(bundle) -> bytes:
    return bundle.to_bytes()


def rewrite(data: bytes, meta=None, tensors=None, header=None) -> bytes:
    """Re-serialise a bundle after editing its metadata / tensor table (a forged file)."""
    n = int.from_bytes(data[:8], "little")
    h = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    if meta:
        meta(h["__metadata__"])
    if header:
        header(h)
    if tensors:
        tensors(h)
    raw = json.dumps(h).encode()
    return len(raw).to_bytes(8, "little") + raw + body


def set_json(key, fn):
    def edit(meta):
        obj = json.loads(meta[key])
        fn(obj)
        meta[key] = json.dumps(obj)

    return edit


def test_round_trip_and_deterministic_bytes(bundle, data, tmp_path):
    again = m.load_bundle(data)
    assert again.to_bytes() == data
    assert again.manifest == bundle.manifest and again.spec == bundle.spec and again.config == bundle.config
    assert torch.equal(again.alpha, bundle.alpha) and again.fingerprint == bundle.fingerprint
    n = m.save_bundle(bundle, tmp_path / "b.mcnc")
    assert n == len(data) and (tmp_path / "b.mcnc").read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["b.mcnc"]  # no temp file left behind


def test_is_a_plain_safetensors_file(data):
    tensors = safetensors.torch.load(data)
    assert set(tensors) == {"mcnc.alpha", "mcnc.beta", "raw.0.bias", "raw.2.bias", "raw.4.bias"}
    meta = parse_header(data, max_header_bytes=1 << 20, max_numel=1 << 30)[0]
    assert meta["format"] == "mcnc-bundle" and meta["format_version"] == "1"
    assert set(meta) == {
        "format", "format_version", "generator", "generator_sha256", "config",
        "mode", "rank", "manifest", "fingerprint",
    }  # fmt: skip


def test_sizes_and_ratio(bundle, data):
    assert bundle.num_params == 16 * 48 + 48 + 48 * 32 + 32 + 32 * 4 + 4
    assert bundle.stored_numbers == bundle.alpha.numel() + bundle.beta.numel() + 48 + 32 + 4
    assert bundle.reconstructed_nbytes == 4 * bundle.num_params


GOLDEN = {
    "golden_full_v1.mcnc": "fe4d37a1c8a0b7604050f95e04863f72f625fe5728f6d3b8d77de4b00d27e7f7",
    "golden_delta_r2_v1.mcnc": "cb4700f5b80c0ae1abb7bf7d74eec37ef8f36730479e4639c3af5252128d3a19",
    "golden_base_v1.safetensors": "5ab7f9fc6926607ec0fd1e787ef71a69dbf56904c103e9323a3b7c4f8d40732f",
    "golden_full_v2.mcnc": "25cafe5e5ad0fba0a19f42becb73398614d1e7f51fc3985aa81fbc5d89f47608",
    "golden_delta_r2_v2.mcnc": "f3df82316db8709e4be333d56e9ecc68aafdd7fbf060601fbb8e405b868e0499",
    "golden_full_r16_v2.mcnc": "0fee79dd8a3285ac74fec2cff6bb4ec7b1888a22409ab3034f34cbe9cf2ed1f4",
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_files_are_frozen(name):
    assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == GOLDEN[name], "golden files must never change"


def test_golden_full_bundle_reconstructs_to_its_fingerprint():
    data = (DATA / "golden_full_v1.mcnc").read_bytes()
    bundle = m.load_bundle(data)
    assert bundle.to_bytes() == data  # the writer still produces exactly these bytes
    assert bundle.metadata == {"x-purpose": "golden test vector"}
    state = m.reconstruct(bundle, verify=True)
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias"]
    torch.testing.assert_close(
        state["0.weight"].reshape(-1)[:2], torch.tensor([-0.07971043139696121, 0.04871058836579323]), rtol=1e-4, atol=0
    )


def test_golden_delta_bundle_reconstructs_with_its_base():
    data = (DATA / "golden_delta_r2_v1.mcnc").read_bytes()
    bundle = m.load_bundle(data)
    assert bundle.to_bytes() == data and bundle.base.name == "golden-base"
    assert [(e.name, e.storage, e.rank) for e in bundle.manifest if e.storage == "mcnc"] == [
        ("0.weight", "mcnc", 2), ("2.weight", "mcnc", 2),
    ]  # fmt: skip
    base = safetensors.torch.load_file(DATA / "golden_base_v1.safetensors")
    state = m.reconstruct(bundle, base=base, verify=True)
    torch.testing.assert_close(
        state["0.weight"].reshape(-1)[:2], torch.tensor([-0.20135803520679474, 0.08557052910327911]), rtol=1e-4, atol=0
    )


@pytest.mark.parametrize(
    ("name", "ranks", "first"),
    [
        ("golden_full_v2.mcnc", [0, 0], [-0.07971043139696121, 0.04871058836579323]),
        ("golden_delta_r2_v2.mcnc", [2, 2], [-0.20135803520679474, 0.08557052165269852]),
        ("golden_full_r16_v2.mcnc", [16, 16], [-0.025499634444713593, -0.01864190399646759]),  # over-complete
    ],
)
def test_golden_v2_bundles_reconstruct_to_their_fingerprints(name, ranks, first):
    data = (DATA / name).read_bytes()
    bundle = m.load_bundle(data)
    assert bundle.to_bytes() == data
    assert (bundle.spec.version, bundle.spec.init) == (2, "siren-frequency-v2")
    assert [e.rank for e in bundle.manifest if e.storage == "mcnc"] == ranks
    base = safetensors.torch.load_file(DATA / "golden_base_v1.safetensors") if bundle.base else None
    state = m.reconstruct(bundle, base=base, verify=True)
    torch.testing.assert_close(state["0.weight"].reshape(-1)[:2], torch.tensor(first), rtol=1e-4, atol=0)


def test_golden_writer_still_produces_every_golden_file():
    # Rebuilding the golden models with today's compress/export gives the frozen files (v1 and v2):
    # the generator rules, the config serialisation and the writer have not drifted.
    sys.path.insert(0, str(DATA))
    try:
        import make_golden
    finally:
        sys.path.remove(str(DATA))
    for name, data in make_golden.build().items():
        assert make_golden.same_content((DATA / name).read_bytes(), data), name


# ---- malformed input: each case raises a specific MCNCError subclass naming the problem ----


def test_truncated_files(data):
    with pytest.raises(m.BundleFormatError, match="truncated file: 5 bytes"):
        m.load_bundle(data[:5])
    with pytest.raises(m.BundleFormatError, match="header declares"):
        m.load_bundle(data[:100])
    with pytest.raises(m.BundleFormatError, match="truncated file: tensors cover"):
        m.load_bundle(data[:-4])
    with pytest.raises(m.BundleFormatError, match="trailing bytes"):
        m.load_bundle(data + b"\0" * 8)


def test_header_not_json_or_not_an_object(data):
    with pytest.raises(m.BundleFormatError, match="not valid JSON"):
        m.load_bundle((4).to_bytes(8, "little") + b"{x: ")
    with pytest.raises(m.BundleFormatError, match="must be a JSON object"):
        m.load_bundle((2).to_bytes(8, "little") + b"[]")
    with pytest.raises(m.BundleFormatError, match="not valid JSON"):
        m.load_bundle((4).to_bytes(8, "little") + b"\xff\xfe{}")
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(m.BundleFormatError):
        m.load_bundle(len(deep).to_bytes(8, "little") + deep)


def test_header_length_over_the_limit_is_refused_before_reading(data):
    forged = (10**12).to_bytes(8, "little") + data[8:]
    with pytest.raises(m.BundleLimitError, match="header declares 1000000000000 bytes"):
        m.load_bundle(forged)


def test_unknown_format_or_version(data):
    for key, value, match in [
        ("format", "gguf", "not an MCNC bundle"),
        ("format_version", "2", "format_version '2' is not supported"),
    ]:
        with pytest.raises(m.UnsupportedVersionError, match=match):
            m.load_bundle(rewrite(data, meta=lambda md, k=key, v=value: md.__setitem__(k, v)))
    with pytest.raises(m.UnsupportedVersionError, match="generator 'mcnc-sine-mlp' version 3 is not supported"):
        m.load_bundle(rewrite(data, meta=set_json("generator", lambda g: g.__setitem__("version", 3))))
    for bad in (True, 2.0, "2"):
        with pytest.raises(m.UnsupportedVersionError, match="is not supported"):
            m.load_bundle(rewrite(data, meta=set_json("generator", lambda g, v=bad: g.__setitem__("version", v))))
    # A version whose init rule the spec does not name is refused, not reinterpreted.
    other = {2: "siren-uniform-v1", 1: "siren-frequency-v2"}
    with pytest.raises(m.BundleFormatError, match="init .* is not supported"):
        m.load_bundle(rewrite(data, meta=set_json("generator", lambda g: g.__setitem__("version", 3 - g["version"]))))
    assert other  # both directions are covered by the fixture's version (v2) and the golden v1 files


def test_unknown_and_missing_metadata_keys(data):
    with pytest.raises(m.BundleFormatError, match="unknown metadata keys \\['extra'\\]"):
        m.load_bundle(rewrite(data, meta=lambda md: md.__setitem__("extra", "1")))
    assert m.load_bundle(rewrite(data, meta=lambda md: md.__setitem__("x-note", "ok"))).metadata == {"x-note": "ok"}
    with pytest.raises(m.BundleFormatError, match="lacks required keys \\['fingerprint'\\]"):
        m.load_bundle(rewrite(data, meta=lambda md: md.pop("fingerprint")))


def test_declared_parameter_counts_beyond_limits_are_refused_before_allocation(data):
    def huge(manifest):
        manifest[0]["shape"] = [10**6, 10**6]  # 10^12 parameters

    with pytest.raises(m.BundleLimitError, match="declares 1000000000000 parameters"):
        m.load_bundle(rewrite(data, meta=set_json("manifest", huge)))
    with pytest.raises(m.BundleLimitError, match="more than 1000 parameters"):
        m.load_bundle(data, limits=m.ReadLimits(max_params=1000))
    with pytest.raises(m.BundleLimitError, match="over the limit of 100"):
        m.load_bundle(data, limits=m.ReadLimits(max_bytes=100))


def test_forged_tensor_shape_in_the_header(data):
    def forge(h):
        h["mcnc.alpha"]["shape"] = [10**9, 4]

    with pytest.raises(m.BundleFormatError, match="data_offsets span"):
        m.load_bundle(rewrite(data, tensors=forge))

    def shape_ok_offsets_wrong(h):
        h["mcnc.beta"]["data_offsets"][1] += 4

    with pytest.raises(m.BundleFormatError):
        m.load_bundle(rewrite(data, tensors=shape_ok_offsets_wrong))


def test_inconsistent_manifest(data):
    cases = [
        (lambda mf: mf[0].__setitem__("shape", [48, 17]), m.ManifestError, "declares 12 chunks"),
        (lambda mf: mf[2].__setitem__("chunk_offset", 3), m.ManifestError, "chunk_offset 3, expected 12"),
        (lambda mf: mf[0].__setitem__("dtype", "I32"), m.ManifestError, "must be floating point"),
        (lambda mf: mf[1].__setitem__("storage", "base"), m.ManifestError, "only valid in delta"),
        (lambda mf: mf[1].__setitem__("shape", [47]), m.ManifestError, "'raw.0.bias' is F32\\[48\\]"),
        (lambda mf: mf.append(dict(mf[1])), m.DuplicateTensorError, "names tensor '0.bias' twice"),
        (lambda mf: mf[0].__setitem__("rank", "2"), m.ManifestError, "rank must be an int"),
        (lambda mf: mf[0].pop("chunks"), m.ManifestError, "keys must be"),
    ]
    for edit, exc, match in cases:
        with pytest.raises(exc, match=match):
            m.load_bundle(rewrite(data, meta=set_json("manifest", edit)))


def test_missing_unexpected_and_duplicate_tensors(bundle, data):
    with pytest.raises(m.MissingTensorError, match="raw.0.bias"):
        m.load_bundle(rewrite(data, tensors=lambda h: h.__setitem__("renamed", h.pop("raw.0.bias"))))
    # A tensor the manifest does not explain: rebuild the file with one extra tensor.
    extra = dict(bundle.raw, **{"ghost": torch.zeros(2)})
    names = [("mcnc.alpha", bundle.alpha), ("mcnc.beta", bundle.beta)]
    names += [("raw." + k if k != "ghost" else k, v) for k, v in extra.items()]
    prefix, _ = build_header([(n, "F32", tuple(t.shape)) for n, t in names], bundle.header_metadata())
    forged = prefix + b"".join(t.contiguous().numpy().tobytes() for _, t in names)
    with pytest.raises(m.UnexpectedTensorError, match="ghost"):
        m.load_bundle(forged)
    n = int.from_bytes(data[:8], "little")
    text = data[8 : 8 + n].decode()
    dup = text.replace('"mcnc.beta":', '"mcnc.beta":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"mcnc.beta":', 1)
    with pytest.raises(m.DuplicateTensorError, match="'mcnc.beta' appears twice"):
        m.load_bundle(len(dup).to_bytes(8, "little") + dup.encode() + data[8 + n :])


def test_wrong_dtype_of_codes(data):
    def to_i32(h):
        h["mcnc.alpha"]["dtype"] = "I32"

    with pytest.raises(m.ManifestError, match="'mcnc.alpha' is I32"):
        m.load_bundle(rewrite(data, tensors=to_i32))
    with pytest.raises(m.BundleFormatError, match="unsupported dtype 'F8'"):
        m.load_bundle(rewrite(data, tensors=lambda h: h["mcnc.alpha"].__setitem__("dtype", "F8")))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_codes_and_raw_tensors(bundle, value):
    bundle.alpha[2, 1] = value
    with pytest.raises(m.NonFiniteError, match="'mcnc.alpha' holds a non-finite value at flat index 9"):
        m.Bundle.from_bytes(_unchecked_bytes(bundle))
    bundle.alpha[2, 1] = 0.0
    bundle.raw["2.bias"][3] = value
    with pytest.raises(m.NonFiniteError, match="'raw.2.bias'"):
        m.Bundle.from_bytes(_unchecked_bytes(bundle))
    with pytest.raises(m.NonFiniteError):
        bundle.to_bytes()  # the writer refuses what the reader would refuse


def _unchecked_bytes(bundle: m.Bundle) -> bytes:
    names = [("mcnc.alpha", bundle.alpha), ("mcnc.beta", bundle.beta)]
    names += [("raw." + e.name, bundle.raw[e.name]) for e in bundle.manifest if e.storage == "raw"]
    prefix, _ = build_header([(n, "F32", tuple(t.shape)) for n, t in names], bundle.header_metadata())
    return prefix + b"".join(t.contiguous().numpy().tobytes() for _, t in names)


def test_generator_mismatch(data):
    with pytest.raises(m.GeneratorMismatchError, match="records 00000"):
        m.load_bundle(rewrite(data, meta=lambda md: md.__setitem__("generator_sha256", "0" * 64)))


def test_spec_and_config_disagree_or_are_invalid(data):
    with pytest.raises(m.ManifestError, match="disagrees with the config"):
        m.load_bundle(rewrite(data, meta=set_json("generator", lambda g: g.__setitem__("seed", 8))))
    with pytest.raises(m.BundleFormatError, match="k must be an int"):
        m.load_bundle(rewrite(data, meta=set_json("generator", lambda g: g.__setitem__("k", 10**9))))
    with pytest.raises(m.ManifestError, match="mode 'delta' is invalid or disagrees"):
        m.load_bundle(rewrite(data, meta=lambda md: md.__setitem__("mode", "delta")))


def test_bad_fingerprint_and_base_metadata(data):
    with pytest.raises(m.ManifestError, match="missing \\['4.bias'\\]"):
        m.load_bundle(rewrite(data, meta=set_json("fingerprint", lambda f: f["tensors"].pop("4.bias"))))
    with pytest.raises(m.BundleFormatError, match="must be 10 finite numbers"):
        m.load_bundle(rewrite(data, meta=set_json("fingerprint", lambda f: f["tensors"]["4.bias"].pop())))
    with pytest.raises(m.BundleFormatError, match="must not carry a 'base'"):
        m.load_bundle(
            rewrite(data, meta=lambda md: md.__setitem__("base", '{"name":null,"sha256":"' + "a" * 64 + '"}'))
        )


def test_malformed_delta_base_reference():
    data = (DATA / "golden_delta_r2_v1.mcnc").read_bytes()
    with pytest.raises(m.ManifestError, match="64 lowercase hex"):
        m.load_bundle(rewrite(data, meta=set_json("base", lambda b: b.__setitem__("sha256", "xyz"))))
    with pytest.raises(m.BundleFormatError, match="lacks the 'base'"):
        m.load_bundle(rewrite(data, meta=lambda md: md.pop("base")))


def test_all_errors_share_one_root():
    for exc in (m.BundleFormatError, m.BundleLimitError, m.ManifestError, m.NonFiniteError, m.ConfigError):
        assert issubclass(exc, m.MCNCError) and issubclass(exc, ValueError)


# ---- the generator is bounded before it is built, and a refused one is never kept ----


def _with_generator(data: bytes, **fields) -> bytes:
    def edit(meta):
        for key in ("generator", "config"):
            obj = json.loads(meta[key])
            obj.update(fields)
            meta[key] = json.dumps(obj)

    return rewrite(data, meta=edit)


def _cached_specs() -> set:
    from mcnc_core import generator

    with generator._CACHE_LOCK:
        return {key for key in generator._CACHE}


def test_generator_bomb_is_refused_before_anything_is_built(data, monkeypatch):
    # A 2 KB file declaring a 2**20-wide output layer (67M generator weights; issue 11's D1).
    from mcnc_core import generator

    def refuse(spec):
        raise AssertionError(f"built a generator of {spec.numel} weights before refusing it")

    before = _cached_specs()
    monkeypatch.setattr(generator, "build_generator_weights", refuse)
    with pytest.raises(m.BundleLimitError, match="weights, over the limit of 16777216.*max_generator_numel"):
        m.load_bundle(_with_generator(data, chunk_size=2**20, width=64))
    # width 2048 x chunk_size 4096: 8.4M weights but 17G multiply-adds for the Gram matrix (D11)
    with pytest.raises(m.BundleLimitError, match="Gram matrix, over the limit of 8589934592.*max_generator_macs"):
        m.load_bundle(_with_generator(data, chunk_size=4096, width=2048, depth=1))
    monkeypatch.undo()
    assert _cached_specs() == before
    # the limits are the reader's to raise
    limits = m.ReadLimits(max_generator_numel=2**27)
    with pytest.raises(m.ManifestError, match="chunks"):  # past the generator check, refused for its layout
        m.load_bundle(_with_generator(data, chunk_size=2**20, width=64), limits=limits)


def test_a_generator_that_fails_its_hash_is_not_cached(data):
    forged = _with_generator(data, seed=987654321)  # a valid spec whose weights the file's hash does not match
    before = _cached_specs()
    with pytest.raises(m.GeneratorMismatchError, match="records"):
        m.load_bundle(forged)
    assert _cached_specs() == before
    m.load_bundle(data)  # a good bundle's generator is kept for the reconstructions that follow
    spec = m.load_bundle(data).spec
    assert ("weights", spec) in _cached_specs()
