"""Seed bundles and the structured mutations ``benchmarks/fuzz_server.py`` sends to ``POST /bundles``.

A mutant is built in three stages, each optional: edits of the parsed header (tensor entries,
``__metadata__`` keys, the JSON inside them: generator, config, manifest, fingerprint, base),
edits of the header's text (duplicate keys, invalid UTF-8, nesting), then edits of the file's
bytes (bit flips, truncation, the length prefix). Edits of the tensor data keep the structure
valid and break only the fingerprint (or put a NaN in). Some edits keep the bundle consistent on
purpose (a new generator seed with its sha256 recomputed, a reshaped tensor with its chunks and
codes resized) so that mutants get past the early checks and reach the deep ones.

Every mutant is a pure function of ``(seed, index)``: ``mutant(seeds, random.Random(f"{seed}:{index}"))``.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import mcnc_core as m
from mcnc_core.generator import GeneratorSpec, generator_sha256

__all__ = ["Mutant", "Seed", "build_seeds", "mutant"]

JSON_KEYS = ("generator", "config", "manifest", "fingerprint", "base")
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"]
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
# Values that break parsers: signs, bounds, types, the limits' edges.
INTS = [0, 1, -1, 2, 3, 7, 8, 255, 256, 1023, 1024, 1025, 4096, 8192, 8193, 2**20, 2**20 + 1, 2**24, 2**31 - 1]
INTS += [2**31, 2**32, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), 10**30]
ODD = [None, True, False, "", "1", "x" * 300, 1.5, -0.0, 1e308, 1e-320, [], [1], {}, {"a": 1}, "\u0000", "é"]


@dataclass(frozen=True)
class Seed:
    """A valid bundle and what checking it needs: its base (delta mode) and the base's file."""

    label: str
    data: bytes
    base: dict[str, torch.Tensor] | None = None
    base_file: bytes | None = None

    def split(self) -> tuple[dict[str, Any], bytes]:
        n = struct.unpack("<Q", self.data[:8])[0]
        return json.loads(self.data[8 : 8 + n]), self.data[8 + n :]


@dataclass
class Mutant:
    """Bytes to upload, the seed they came from and what was done to them (one line per edit)."""

    data: bytes
    seed: Seed
    edits: list[str]


# -- seeds ----------------------------------------------------------------------------------------


def _net(seed: int, hidden: int, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(8, hidden)]
    if bn:  # an int64 buffer (num_batches_tracked) becomes a raw non-float tensor
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(), nn.Linear(hidden, 4)]
    return nn.Sequential(*layers)


def build_seeds() -> list[Seed]:
    """Full mode (with and without a BatchNorm), generator v1, delta with a base, over-complete rank."""
    from safetensors.torch import save

    small = {"chunk_size": 64, "k": 4, "width": 16}
    seeds = []
    for label, net, cfg in [
        ("full", _net(0, 16), m.MCNCConfig(**small)),
        ("full-bn", _net(1, 12, bn=True), m.MCNCConfig(**small)),
        ("full-v1", _net(2, 16), m.MCNCConfig(generator_version=1, **small)),
        ("full-r16", _net(3, 16), m.MCNCConfig(rank=16, **small)),  # over-complete: rank > min(16, 8)
        ("delta", _net(4, 16), m.MCNCConfig(mode="delta", base_name="fuzz-base", **small)),
        ("delta-r2", _net(5, 16), m.MCNCConfig(mode="delta", rank=2, **small)),
    ]:
        m.compress(net, cfg)
        with torch.no_grad():  # move the codes off their initialisation: a real, non-trivial bundle
            for p in net.parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn_like(p))
        bundle = m.export_bundle(net, metadata={"x-fuzz-seed": label})
        base = file = None
        if cfg.mode == "delta":
            base = {k: v.contiguous() for k, v in m.base_state_dict(net).items()}
            file = save(base)
        seeds.append(Seed(label, bundle.to_bytes(), base, file))
    return seeds


# -- serialisation --------------------------------------------------------------------------------


def pack(header: bytes, body: bytes, *, pad: bool = True) -> bytes:
    if pad:
        header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + body


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def relayout(header: dict[str, Any], tensors: dict[str, bytes]) -> bytes:
    """Give ``header``'s entries contiguous offsets in their order and return the data section."""
    body, offset = [], 0
    for name, entry in header.items():
        if name == "__metadata__" or name not in tensors or not isinstance(entry, dict):
            continue
        entry["data_offsets"] = [offset, offset + len(tensors[name])]
        offset += len(tensors[name])
        body.append(tensors[name])
    return b"".join(body)


def tensors_of(header: dict[str, Any], body: bytes) -> dict[str, bytes]:
    return {n: body[e["data_offsets"][0] : e["data_offsets"][1]] for n, e in header.items() if n != "__metadata__"}


def resign(meta: dict[str, str]) -> None:
    """Recompute ``generator_sha256`` when the generator spec is valid and small (a consistent edit)."""
    try:
        spec = GeneratorSpec.from_dict(json.loads(meta["generator"]))
    except Exception:
        return
    if spec.numel <= 1 << 20:
        meta["generator_sha256"] = generator_sha256(spec)


# -- header edits (parsed) ------------------------------------------------------------------------

Doc = dict[str, Any]  # {"header": dict, "tensors": {name: bytes}, "layout": bool}


def _meta(doc: Doc) -> dict[str, Any]:
    meta = doc["header"].setdefault("__metadata__", {})
    return meta if isinstance(meta, dict) else {}


def _json_field(doc: Doc, key: str) -> Any:
    try:
        return json.loads(_meta(doc)[key])
    except Exception:
        return None


def _value(rng: random.Random, current: Any = None) -> Any:
    r = rng.random()
    if r < 0.55:
        return rng.choice(INTS)
    if r < 0.8:
        return rng.choice(ODD)
    if isinstance(current, int) and not isinstance(current, bool):
        return current + rng.choice([-2, -1, 1, 2, current, -current])
    return rng.choice([float("nan"), float("inf"), -float("inf"), "NaN", 2.5, [current, current], {"v": current}])


def e_generator_field(rng: random.Random, doc: Doc) -> str:
    gen = _json_field(doc, "generator")
    if not isinstance(gen, dict):
        return "generator: not an object, left"
    key = rng.choice([*sorted(gen), "extra"])
    value: Any
    if key in ("width", "depth", "k", "chunk_size") and rng.random() < 0.4:
        # in range and within the reader's limits: passes validation, reaches the generator build
        value = {"width": [1, 8, 64, 256], "depth": [1, 3, 8], "k": [1, 2, 8], "chunk_size": [2, 32, 128]}[key]
        value = rng.choice(value)
    elif key == "seed" and rng.random() < 0.5:
        value = rng.choice([1, 2**32, 2**64 - 1, rng.randrange(2**64)])
    elif key == "bound" and rng.random() < 0.5:
        value = rng.choice([1e-9, 0.5, 1e4, 10000.0001, 0, -1])
    elif key == "version":
        value = rng.choice([1, 2, 3, 0, "2", 2.0, True, None])
    else:
        value = _value(rng, gen.get(key))
    gen[key] = value
    _meta(doc)["generator"] = json.dumps(gen, separators=(",", ":"))
    mirrored = rng.random() < 0.6  # the config repeats the generator fields; keep them agreeing
    cfg = _json_field(doc, "config")
    if mirrored and isinstance(cfg, dict) and key in ("width", "depth", "k", "chunk_size", "seed", "bound", "version"):
        cfg["generator_version" if key == "version" else key] = value
        _meta(doc)["config"] = dumps(cfg)
    resigned = rng.random() < 0.7
    if resigned:
        resign(_meta(doc))
    return f"generator.{key}={value!r} mirrored={mirrored} resigned={resigned}"


def e_config_field(rng: random.Random, doc: Doc) -> str:
    cfg = _json_field(doc, "config")
    if not isinstance(cfg, dict):
        return "config: not an object, left"
    key = rng.choice([*sorted(cfg), "unknown_key", "__proto__"])
    if key == "mode":
        value: Any = rng.choice(["full", "delta", "Full", "", None, 1])
    elif key in ("targets", "exclude", "trainable"):
        value = rng.choice([None, [], ["0.weight"], "0.weight", [1], ["x"] * 1000])
    else:
        value = _value(rng, cfg.get(key))
    cfg[key] = value
    _meta(doc)["config"] = json.dumps(cfg, separators=(",", ":"))
    return f"config.{key}={value!r}"


def e_mode_rank(rng: random.Random, doc: Doc) -> str:
    key = rng.choice(["mode", "rank"])
    value = rng.choice(
        ["delta", "full", "FULL", " full", ""]
        if key == "mode"
        else ["0", "1", "16", "-0", "00", " 0", "0x0", "1e0", "\u0660"]
    )
    _meta(doc)[key] = value
    return f"{key}={value!r}"


def e_manifest_entry(rng: random.Random, doc: Doc) -> str:
    man = _json_field(doc, "manifest")
    if not isinstance(man, list) or not man:
        return "manifest: not a list, left"
    i = rng.randrange(len(man))
    op = rng.random()
    if op < 0.12:
        del man[i]
        what = f"manifest[{i}] deleted"
    elif op < 0.22:
        man.insert(rng.randrange(len(man) + 1), dict(man[i]))
        what = f"manifest[{i}] duplicated"
    elif op < 0.3:
        j = rng.randrange(len(man))
        man[i], man[j] = man[j], man[i]
        what = f"manifest[{i}] <-> [{j}]"
    elif op < 0.36:
        man[i] = rng.choice([None, [], "x", 1])
        what = f"manifest[{i}]={man[i]!r}"
    else:
        entry = man[i]
        key = rng.choice([*sorted(entry), "extra"])
        if key == "name":
            value: Any = rng.choice(["", "a" * 10000, "../../etc/passwd", "x\u0000y", "é/ü", man[0]["name"], 1, None])
        elif key == "shape":
            value = rng.choice([[], [0], [-1], [2**40, 2**40], [1] * 9, [1.5], "[4]", [2**34 + 1], [4, 0], [2**31]])
        elif key == "dtype":
            value = rng.choice([*DTYPES, "F8", "f32", "", None])
        elif key == "storage":
            value = rng.choice(["mcnc", "raw", "base", "RAW", "", None])
        elif key == "rank":
            value = rng.choice([0, 1, 2, 4096, 4097, -1, True, 1.0])
        else:
            value = _value(rng, entry.get(key))
        entry[key] = value
        what = f"manifest[{i}].{key}={value!r}"[:200]
    _meta(doc)["manifest"] = json.dumps(man, separators=(",", ":"))
    return what


def e_reshape_consistent(rng: random.Random, doc: Doc) -> str:
    """Change a compressed tensor's shape or rank and resize its codes to match: only the
    fingerprint (and the base, in delta mode) is left to notice."""
    man, gen = _json_field(doc, "manifest"), _json_field(doc, "generator")
    if not isinstance(man, list) or not isinstance(gen, dict):
        return "reshape: no manifest, left"
    k, size = gen.get("k"), gen.get("chunk_size")
    if not (type(k) is int and 1 <= k <= 1024 and type(size) is int and 2 <= size <= 2**20):
        return "reshape: generator spec already broken, left"
    mc = [e for e in man if isinstance(e, dict) and e.get("storage") == "mcnc"]
    if not mc:
        return "reshape: no mcnc entry, left"
    entry = rng.choice(mc)
    shape = rng.choice([[1], [3, 5], [512, 512], [4096, 4096], [1, 1, 1, 1, 1, 1, 1, 1], [65], [2, 64]])
    rank = rng.choice([0, 0, 1, 3, 64]) if len(shape) >= 2 else 0
    if rank and math.prod(shape) > 10**6 and rng.random() < 0.5:
        rank = 1  # low rank over a big tensor: a small bundle that reconstructs to 64 MiB
    if not rank and math.prod(shape) > 10**5:
        shape = [256, 256]
    factors = [[shape[0], rank], [rank, math.prod(shape[1:])]] if rank else [shape]
    entry.update(shape=shape, rank=rank, chunks=sum(math.ceil(math.prod(f) / size) for f in factors))
    off = 0
    for e in man:
        if isinstance(e, dict) and e.get("storage") == "mcnc":
            e["chunk_offset"] = off
            off += e["chunks"]
    gen_rng = torch.Generator().manual_seed(rng.randrange(2**31))
    doc["tensors"]["mcnc.alpha"] = torch.randn(off, k, generator=gen_rng).numpy().tobytes()
    doc["tensors"]["mcnc.beta"] = torch.rand(off, generator=gen_rng).numpy().tobytes()
    doc["header"]["mcnc.alpha"]["shape"] = [off, k]
    doc["header"]["mcnc.beta"]["shape"] = [off]
    _meta(doc)["manifest"] = dumps(man)
    doc["layout"] = True
    return f"reshape {entry['name']} to {shape} rank {rank} (codes resized to {off})"


def e_fingerprint(rng: random.Random, doc: Doc) -> str:
    fp = _json_field(doc, "fingerprint")
    if not isinstance(fp, dict) or not isinstance(fp.get("tensors"), dict) or not fp["tensors"]:
        return "fingerprint: not an object, left"
    name = rng.choice(sorted(fp["tensors"]))
    op = rng.random()
    if op < 0.4:  # structurally valid, numerically wrong: only a reconstruction notices
        values = fp["tensors"][name]
        j = rng.randrange(len(values))
        values[j] = values[j] * rng.choice([1.5, -1, 0, 1 + 1e-3, 1 + 1e-6]) + rng.choice([0, 1e-3])
        what = f"fingerprint[{name}][{j}] scaled"
    elif op < 0.55:
        fp["tensors"][name] = rng.choice([[], [1.0] * 9, [1.0] * 11, ["1"] * 10, [None] * 10, [1e400] * 10])
        what = f"fingerprint[{name}] = {fp['tensors'][name]!r}"[:200]
    elif op < 0.65:
        fp["tensors"][name][0] = float("nan")
        what = f"fingerprint[{name}][0] = NaN"
    elif op < 0.75:
        del fp["tensors"][name]
        what = f"fingerprint[{name}] deleted"
    elif op < 0.85:
        fp["tensors"]["not-a-tensor"] = fp["tensors"][name]
        what = "fingerprint: extra tensor"
    else:
        fp[rng.choice(["algorithm", "extra"])] = rng.choice(["mcnc-fp-v2", "", None, 1, "mcnc-fp-v1"])
        what = f"fingerprint fields {sorted(fp)} algorithm={fp.get('algorithm')!r}"
    _meta(doc)["fingerprint"] = json.dumps(fp, separators=(",", ":"))  # NaN is written as the literal NaN
    return what


def e_base_ref(rng: random.Random, doc: Doc) -> str:
    meta = _meta(doc)
    base = _json_field(doc, "base")
    digest = base["sha256"] if isinstance(base, dict) and isinstance(base.get("sha256"), str) else "ab" * 32
    value: Any = rng.choice(
        [
            {"name": "b", "sha256": digest + "\n"},  # `$` matches before a trailing newline
            {"name": "b", "sha256": digest.upper()},
            {"name": "b", "sha256": digest[:-1]},
            {"name": "b", "sha256": "g" * 64},
            {"name": None, "sha256": f"{rng.randrange(16**64):064x}"},  # valid, but no such base here
            {"name": 1, "sha256": digest},
            {"name": "x" * 5000, "sha256": digest},
            {"name": "../b\n", "sha256": digest},
            {"sha256": digest},
            {"name": "b", "sha256": digest, "extra": 1},
            [digest],
            digest,
        ]
    )
    meta["base"] = json.dumps(value)
    return f"base={meta['base'][:120]!r}"


def e_metadata_key(rng: random.Random, doc: Doc) -> str:
    meta = _meta(doc)
    op = rng.random()
    if op < 0.25 and meta:
        key = rng.choice(sorted(meta))
        del meta[key]
        return f"metadata[{key}] deleted"
    if op < 0.4:
        key = rng.choice(["unknown", "X-upper", "x-", "format ", "", "\u0000"])
        meta[key] = "v"
        return f"metadata[{key!r}] added"
    if op < 0.6:  # x- keys are free-form: sizes, many keys, odd characters
        size = rng.choice([0, 1, 1000, 100_000, 1 << 20, 3 << 20])
        n = rng.choice([1, 1, 10, 5000])
        for i in range(n):
            meta[f"x-fuzz-{i}"] = rng.choice(["a", "é", "\u0000", "\n", "\ud7ff"]) * (size // n)
        return f"{n} x- keys of {size // n} chars"
    key = rng.choice(sorted(meta) or ["format"])
    meta[key] = rng.choice([1, None, True, [], {}, 1.5, {"a": "b"}])  # not a string: the header's type rule
    return f"metadata[{key}] = {meta[key]!r}"


def e_json_text(rng: random.Random, doc: Doc) -> str:
    meta = _meta(doc)
    key = rng.choice([*JSON_KEYS, "generator_sha256", "format", "format_version"])
    value = rng.choice(
        [
            "",
            "{",
            "null",
            "[]",
            "{}",
            '"x"',
            "1e999",
            "NaN",
            "-Infinity",
            "[" * 100_000 + "]" * 100_000,
            '{"a":' * 5000 + "1" + "}" * 5000,
            "\ufeff{}",
            '{"k":4,"k":5}',
            "1" * 5000,
            "A" * 64,
            "1 ",
            "01",
            "2",
            "mcnc-bundle\n",
        ]
    )
    if key == "generator" and rng.random() < 0.3 and isinstance(meta.get("generator"), str):  # a duplicate key
        value = meta["generator"].rstrip("}") + ',"k":4}'
    meta[key] = value
    return f"metadata[{key}] = {value[:60]!r}"


def e_tensor_entry(rng: random.Random, doc: Doc) -> str:
    header = doc["header"]
    names = [n for n in header if n != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    op = rng.random()
    if op < 0.15:
        del header[name]
        return f"tensor {name} entry deleted (data kept)"
    if op < 0.25:
        header["raw.extra"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        doc["tensors"]["raw.extra"] = b"\0\0\0\0"
        doc["layout"] = True
        return "tensor raw.extra added"
    if op < 0.3:
        header[name] = rng.choice([None, [], "x", {"dtype": "F32"}])
        return f"tensor {name} entry = {header[name]!r}"
    key = rng.choice(["dtype", "shape", "data_offsets", "extra"])
    if key == "dtype":
        value: Any = rng.choice([*DTYPES, "F8_E4M3", "C64", "", None])
    elif key == "shape":
        value = rng.choice([[], [-1], [2**53], [2**34 + 1], [1] * 9, [1.0], None, [3, 2**62], [0]])
    elif key == "data_offsets":
        lo, hi = entry["data_offsets"]
        value = rng.choice([[hi, lo], [lo, hi + 1], [lo - 1, hi], [0, 2**53], [lo], [lo, hi, hi], [-1, hi], [lo, 1e3]])
    else:
        value = 1
    entry[key] = value
    return f"tensor {name}.{key} = {value!r}"


def e_reseed_consistent(rng: random.Random, doc: Doc) -> str:
    """A new generator seed in both spec and config, sha256 recomputed: valid but every
    compressed tensor reconstructs to something the fingerprint does not describe."""
    gen, cfg = _json_field(doc, "generator"), _json_field(doc, "config")
    if not isinstance(gen, dict) or not isinstance(cfg, dict):
        return "reseed: no generator, left"
    gen["seed"] = cfg["seed"] = rng.randrange(2**64)
    _meta(doc).update(generator=dumps(gen), config=dumps(cfg))
    resign(_meta(doc))
    return f"generator seed -> {gen['seed']} (consistent)"


def e_data(rng: random.Random, doc: Doc) -> str:
    """Edit tensor values in place; the structure stays valid."""
    tensors = doc["tensors"]
    name = rng.choice(sorted(n for n in tensors if doc["header"].get(n, {}).get("dtype", "") in ("F32", "F16", "BF16")))
    dtype = doc["header"][name]["dtype"]
    np_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    t = torch.frombuffer(bytearray(tensors[name]), dtype=np_dtype).clone()
    if t.numel() == 0:
        return f"{name}: empty, left"
    i = rng.randrange(t.numel())
    op = rng.random()
    if op < 0.6:
        factor = rng.choice([-1.0, 0.0, 2.0, 1.01, 1 + 1e-5, 1e30])
        t[i] = t[i] * factor + rng.choice([0.0, 1.0])
        what = f"{name}[{i}] *= {factor}"
    elif op < 0.8:
        t[i] = rng.choice([float("nan"), float("inf"), -float("inf")])
        what = f"{name}[{i}] = {float(t[i])}"
    else:
        t.mul_(rng.choice([0.0, -1.0, 1e-30, 3.0]))
        what = f"{name} scaled as a whole"
    tensors[name] = t.view(torch.uint8).numpy().tobytes()
    return what


def e_splice(rng: random.Random, doc: Doc, seeds: list[Seed]) -> str:
    """Another seed's tensor data (or header metadata) in this one."""
    other = rng.choice(seeds)
    oh, obody = other.split()
    if rng.random() < 0.5:
        doc["header"]["__metadata__"] = oh["__metadata__"]
        return f"metadata from seed {other.label}"
    doc["header"] = {k: v for k, v in oh.items()}
    doc["header"]["__metadata__"] = _meta(doc) or oh["__metadata__"]
    doc["tensors"] = tensors_of(oh, obody)
    return f"tensors from seed {other.label}"


HEADER_EDITS: list[tuple[float, Callable[..., str]]] = [
    (10, e_generator_field),
    (6, e_config_field),
    (3, e_mode_rank),
    (10, e_manifest_entry),
    (4, e_reshape_consistent),
    (8, e_fingerprint),
    (5, e_base_ref),
    (6, e_metadata_key),
    (6, e_json_text),
    (8, e_tensor_entry),
    (4, e_reseed_consistent),
    (10, e_data),
    (2, e_splice),
]

# -- text and byte edits --------------------------------------------------------------------------


def t_edit(rng: random.Random, text: bytes) -> tuple[bytes, str]:
    op = rng.randrange(9)
    if op == 0:  # a duplicate key at the top level or inside __metadata__, same or different value
        try:
            obj = json.loads(text)
            pairs = list(obj.items())
            inner = rng.random() < 0.5 and isinstance(obj.get("__metadata__"), dict)
            target = list(obj["__metadata__"].items()) if inner else pairs
            key, value = rng.choice(target)
        except Exception:
            return text, "duplicate: header not an object"
        target.insert(rng.randrange(len(target) + 1), (key, value if rng.random() < 0.5 else "dup"))
        if inner:
            pairs = [(k, _Raw(_obj(target)) if k == "__metadata__" else v) for k, v in pairs]
        return _obj(pairs).encode(), f"duplicate key {key!r}" + (" in __metadata__" if inner else "")
    if op == 1:
        i = rng.randrange(len(text))
        return text[:i] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]) + text[i + 1 :], "invalid UTF-8 byte"
    if op == 2:
        return b"\xef\xbb\xbf" + text, "UTF-8 BOM"
    if op == 3:
        return rng.choice([b"[]", b"null", b'"x"', b"1", b"{}", b"", b" " * 64, b"{" * 100_000]), "header replaced"
    if op == 4:
        return text.rstrip() + b"\x00" * rng.choice([1, 7, 8]), "NUL padding"
    if op == 5:
        return text.rstrip() + b",}", "trailing comma"
    if op == 6:
        return text.rstrip() + b'{"a":1}', "second JSON value"
    if op == 7:
        return text.replace(b'"F32"', b'"F16"', 1), "first F32 -> F16"
    return text.replace(b'"shape":[', b'"shape":[1,', 1), "shape gets a leading 1"


class _Raw(str):
    """Already-serialised JSON, inserted verbatim by ``_obj``."""


def _obj(pairs: list[tuple[str, Any]]) -> str:
    """A JSON object from pairs, duplicates kept."""
    return "{" + ",".join(f"{json.dumps(k)}:{v if isinstance(v, _Raw) else json.dumps(v)}" for k, v in pairs) + "}"


def b_edit(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
    op = rng.randrange(8)
    if op == 0:
        out = bytearray(data)
        flips = rng.choice([1, 1, 2, 8, 64])
        for _ in range(flips):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out), f"{flips} bit flips"
    if op == 1 and len(data) > 8 + n:
        out = bytearray(data)
        i = rng.randrange(8 + n, len(out))
        out[i] ^= 1 << rng.randrange(8)
        return bytes(out), f"bit flip in the data at {i}"
    if op == 2:
        cut = rng.choice([0, 1, 7, 8, 9, 8 + n // 2, 8 + n, 8 + n + 1, len(data) - 1, rng.randrange(len(data))])
        return data[:cut], f"truncated to {cut}"
    if op == 3:
        return data + rng.choice([b"\0", b"\0" * 8, bytes(rng.randrange(256) for _ in range(33))]), "trailing bytes"
    if op == 4:
        value = rng.choice([0, 1, 7, n - 1, n + 1, n + 8, len(data), len(data) - 8, 2**63, 2**64 - 1, (32 << 20) + 1])
        return struct.pack("<Q", max(0, value)) + data[8:], f"length prefix {value}"
    if op == 5:
        return bytes(rng.randrange(256) for _ in range(rng.choice([1, 8, 64, 4096]))), "random bytes"
    if op == 6:
        i = rng.randrange(len(data))
        return data[:i] + data[i + 1 :], f"byte {i} deleted"
    return data[: 8 + n] + data[8 + n :][::-1], "data reversed"


def _weighted(rng: random.Random, table: list[tuple[float, Callable[..., str]]]) -> Callable[..., str]:
    return rng.choices([f for _, f in table], weights=[w for w, _ in table])[0]


def mutant(seeds: list[Seed], rng: random.Random) -> Mutant:
    """One mutant: 1-3 header edits (85 %), a text edit (10 %), a byte edit (25 %)."""
    seed = rng.choice(seeds)
    header, body = seed.split()
    doc: Doc = {"header": header, "tensors": tensors_of(header, body), "layout": False}
    edits: list[str] = []
    if rng.random() < 0.85:
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            edit = _weighted(rng, HEADER_EDITS)
            try:
                edits.append(edit(rng, doc, seeds) if edit is e_splice else edit(rng, doc))
            except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError, RuntimeError) as exc:
                # an earlier edit broke what this one edits
                edits.append(f"{edit.__name__}: skipped ({type(exc).__name__})")
    header = doc["header"]
    # Without a re-layout the data stays in its original order, whatever the entries now say.
    body = relayout(header, doc["tensors"]) if doc["layout"] else b"".join(doc["tensors"].values())
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=rng.random() < 0.8).encode("utf-8", "surrogatepass")
    if rng.random() < 0.10:
        text, what = t_edit(rng, text)
        edits.append(what)
    data = pack(text, body, pad=rng.random() < 0.9)
    if rng.random() < 0.25 or not edits:
        data, what = b_edit(rng, data)
        edits.append(what)
    return Mutant(data, seed, edits)
