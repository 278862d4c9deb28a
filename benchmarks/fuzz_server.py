"""Fuzz a live server with mutated bundles (and, with ``--schemathesis``, its OpenAPI schema).

Bundle fuzz: valid seed bundles are built in code (``benchmarks/fuzz_mutations.py``: full mode,
generator v1, a BatchNorm's integer buffer, over-complete rank, delta mode with and without a low
rank; their bases registered first) and mutated in structured ways: header fields (generator
spec, config, manifest entries, fingerprint, base reference, tensor entries) set to values that
break parsers, consistent edits that reach the deep checks (a new generator seed with its sha256
recomputed, a tensor reshaped with its codes resized), duplicate keys, invalid UTF-8, huge
declared sizes, large ``x-`` metadata, tensor data edits, bit flips, truncation, the length
prefix. Each mutant is ``POST /bundles`` over real HTTP to ``python -m service`` on 127.0.0.1
(the container command, its own process; its log is captured). Every accepted mutant (200/201)
is then fetched back (``GET /bundles/sha256:<digest>``: the same bytes, ``X-MCNC-Bundle-Digest``)
and its weights streamed (``GET /models/sha256:<digest>/weights``: complete, ``X-MCNC-*``
headers, the same tensors as ``mcnc_core.reconstruct`` in this process), and reconstructed here
with ``verify=True`` to see whether it matches its own fingerprint.

Failures (exit 1): a 5xx, an error without the envelope (``{"error": {code, message,
request_id}}`` and the same ``X-Error-Code``), a stream cut short, weights that differ, a
request that timed out or failed, a traceback in the server's log, the server exiting.
``--strict-fingerprint`` (the default) also fails on mutants accepted although their data do not
match their fingerprint; ``--no-strict-fingerprint`` only counts them.

Reproducible: mutant ``i`` is a pure function of ``(--seed, i)``; failures print both and the first
50 of each kind are saved under ``--save-dir`` (``<i>.mcnc`` plus ``<i>.json``); ``--only 17,42``
replays those indices. A traceback in the log is charged to the mutant being probed when it
appears, which may be the one after its cause (a stream the fuzzer hung up on).

Schemathesis (``--schemathesis``): the ``schemathesis`` command (all phases: examples, coverage,
fuzzing, stateful) against ``/openapi.json`` of the same kind of server, once open and once with
API tokens, with ``--max-examples`` per operation; prints its summary and exits non-zero on any
failure of the checks named in ``ST_CHECKS``.

Usage::

    python benchmarks/fuzz_server.py                     # 10,000 mutants (a few minutes)
    python benchmarks/fuzz_server.py --quick             # 300 mutants (the test suite)
    python benchmarks/fuzz_server.py --only 123 -v       # replay one mutant, print the exchange
    python benchmarks/fuzz_server.py --schemathesis --max-examples 200
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

TOKEN = "fuzz-token"
MAX_WEIGHTS = 64 << 20  # stream at most this much of one mutant's weights, then hang up
UPLOAD_LIMIT = 16 << 20  # MCNC_MAX_UPLOAD_BYTES of the fuzzed server: large x- metadata meets the 413
# Schemathesis checks: what each response must satisfy. Left out, with reasons (the same as
# tests/service/test_schemathesis.py): positive_data_acceptance (the schema types refs and names
# as plain strings; their grammar lives in the server, which answers a typed 400),
# missing_required_header and ignored_auth in the open configuration (no tokens: the bearer
# scheme is documented but not required, by design), allow_header_conformance (a known defect: a
# 405's Allow lists one route's methods only), content_type_conformance on GET /metrics
# (documented as JSON, served as Prometheus text: a known defect). Negative cases stay within the
# documented parameters (no unknown query parameters, no removed Authorization header).
ST_CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "use_after_free",
    "ensure_resource_availability",
    "unsupported_method",
]
ST_AUTH_CHECKS = ["missing_required_header", "ignored_auth"]
ST_OFF = ["positive_data_acceptance", "allow_header_conformance", "object_level_authorization"]


def st_config(tokens: bool) -> str:
    """``schemathesis.toml`` for one configuration (checks named in the file: a ``--checks`` option
    would override the per-operation exclusion)."""
    on = ST_CHECKS + (ST_AUTH_CHECKS if tokens else [])
    off = ST_OFF + ([] if tokens else ST_AUTH_CHECKS)
    lines = ["[generation]", "allow-extra-parameters = false", "with-security-parameters = false", ""]
    lines += ["[checks]"] + [f"{c}.enabled = true" for c in on] + [f"{c}.enabled = false" for c in off]
    lines += ["", "[[operations]]", 'include-path = "/metrics"', "checks.content_type_conformance.enabled = false"]
    return "\n".join(lines) + "\n"


# -- server ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``python -m service`` on a free loopback port; stderr (the log) goes to ``log``."""

    def __init__(self, data_dir: Path, log: Path, *, tokens: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCNC_")}
        env.update(
            PYTHONPATH=str(ROOT),
            MCNC_DATA_DIR=str(data_dir),
            MCNC_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT),
            MCNC_MEMORY_CACHE_BYTES=str(64 << 20),
        )
        if tokens:
            env["MCNC_API_TOKENS"] = json.dumps({TOKEN: ["read", "write", "admin"]})
        cmd = [sys.executable, "-m", "service", "--port", str(self.port), "--log-level", "warning"]
        self._log = log.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.1)

    def close(self) -> int | None:
        """Stop the server; its exit status if it had already exited (a crash), else None."""
        crashed = self.proc.poll()
        if crashed is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self._log.close()
        return crashed


class LogWatch:
    """New server log lines since the last call, flagged when they hold a traceback or an ERROR."""

    def __init__(self, path: Path) -> None:
        self.path, self.pos = path, 0

    def new_errors(self) -> str | None:
        size = self.path.stat().st_size
        if size == self.pos:
            return None
        with self.path.open("rb") as f:
            f.seek(self.pos)
            text = f.read(size - self.pos).decode("utf-8", "replace")
        self.pos = size
        bad = "Traceback" in text or " ERROR " in text or "ERROR:" in text or "CRITICAL" in text
        return text if bad else None


# -- checks ---------------------------------------------------------------------------------------


class Failure(Exception):
    """A finding: ``kind`` (one of the failure classes) and what was seen."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


def check_error(r: httpx.Response) -> str:
    """The error code of a 4xx/5xx, after checking the envelope; raises ``Failure('untyped', ...)``."""
    from service.schemas import ErrorResponse

    try:
        body = r.json()
        ErrorResponse.model_validate(body)
        if set(body) != {"error"} or not body["error"]["message"]:
            raise ValueError(f"envelope keys {sorted(body)}")
        code = body["error"]["code"]
    except Exception as exc:
        raise Failure("untyped", f"{r.status_code} body {r.text[:300]!r}: {exc}") from exc
    if r.headers.get("x-error-code") != code:
        raise Failure("untyped", f"{r.status_code} X-Error-Code {r.headers.get('x-error-code')!r} != {code!r}")
    return str(code)


def check_accepted(client: httpx.Client, mutant: Any, r: httpx.Response, bases: dict[str, Any]) -> str:
    """Follow an accepted upload: bundle back, weights streamed and compared, fingerprint verified.

    Returns:
        ``"fingerprint-ok"``, ``"fingerprint-bad"`` (accepted though its data fail its own
        fingerprint), ``"base-missing"`` (a delta whose base is not registered here),
        ``"base-unknown"`` (served, but with a base the fuzzer does not hold: not verifiable) or
        ``"weights-capped"`` (reconstruction larger than ``MAX_WEIGHTS``; not compared).
    """
    import mcnc_core as m
    from service.schemas import BundlePublic

    digest = hashlib.sha256(mutant.data).hexdigest()
    try:
        rec = BundlePublic.model_validate(r.json())
    except Exception as exc:
        raise Failure("bad-response", f"{r.status_code} body does not validate as BundlePublic: {exc}") from exc
    if rec.id != digest or rec.size != len(mutant.data):
        raise Failure("bad-response", f"record id {rec.id} size {rec.size}, uploaded {digest} of {len(mutant.data)}")
    g = client.get(f"/bundles/sha256:{digest}")
    if g.status_code != 200 or g.content != mutant.data or g.headers.get("x-mcnc-bundle-digest") != f"sha256:{digest}":
        raise Failure("bundle-get", f"GET /bundles: {g.status_code}, {len(g.content)} bytes, {dict(g.headers)}")
    bundle = m.load_bundle(mutant.data)  # the server accepted it: so must the same reader here
    # The base it names (a splice may carry another seed's header); None when edited to an unknown one.
    base = bases.get(bundle.base.sha256) if bundle.base is not None else None
    with client.stream("GET", f"/models/sha256:{digest}/weights") as w:
        if w.status_code != 200:
            w.read()
            if w.status_code >= 500:
                raise Failure("5xx", f"GET weights {w.status_code} {w.text[:300]}")
            code = check_error(w)
            if code == "base_missing" and bundle.base is not None and bundle.base.sha256 not in bases:
                return "base-missing"
            raise Failure(
                "weights-refused", f"GET weights of an accepted bundle: {w.status_code} {code} {w.text[:300]}"
            )
        for h in ("x-mcnc-bundle-digest", "x-mcnc-numerics"):
            if not w.headers.get(h):
                raise Failure("headers", f"GET weights lacks {h}: {dict(w.headers)}")
        if w.headers["x-mcnc-bundle-digest"] != f"sha256:{digest}":
            raise Failure("headers", f"X-MCNC-Bundle-Digest {w.headers['x-mcnc-bundle-digest']} != sha256:{digest}")
        total = int(w.headers["content-length"])
        if total > MAX_WEIGHTS:
            return "weights-capped"
        try:
            body = w.read()
        except httpx.HTTPError as exc:
            raise Failure("stream-cut", f"weights stream of {total} bytes broke: {exc!r}") from exc
        if len(body) != total:
            raise Failure("stream-cut", f"weights: {len(body)} of {total} bytes")
    from safetensors.torch import load

    served = load(body)
    try:
        local = m.reconstruct(bundle, base)
    except m.BaseMismatchError:
        local = None  # the bundle names a base this process does not hold (an edited base reference)
    if local is not None:
        differ = [k for k in local if k not in served or not _same(served[k], local[k])]
        if differ or served.keys() != local.keys():
            raise Failure("weights-differ", f"served weights differ from mcnc_core.reconstruct here: {differ[:5]}")
    if local is None:
        return "base-unknown"  # served with a base this process does not hold: not verifiable here
    try:
        m.reconstruct(bundle, base, verify=True)
    except m.FingerprintMismatchError:
        return "fingerprint-bad"
    return "fingerprint-ok"


def _same(a: Any, b: Any) -> bool:
    """Equal values, dtypes and shapes; NaN equals NaN (finite but huge codes reconstruct to NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return bool((a == b).all())
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def probe(client: httpx.Client, mutant: Any, bases: dict[str, Any], reused: list[str]) -> tuple[int, str, str | None]:
    """Upload one mutant and follow it up. Returns ``(status, code or outcome, accepted outcome)``;
    appends to ``reused`` when the upload met a connection the server had closed."""
    headers = {"Content-Type": "application/octet-stream"}
    try:
        r = client.post("/bundles", content=mutant.data, headers=headers)
    except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
        # A keep-alive connection the server closed (after an unhandled error, uvicorn drops the
        # connection without "Connection: close"): counted, and the upload retried once on a new one.
        reused.append(repr(exc))
        r = client.post("/bundles", content=mutant.data, headers=headers)
    if r.status_code >= 500:
        raise Failure("5xx", f"POST /bundles {r.status_code} {r.text[:500]}")
    if r.status_code >= 400:
        return r.status_code, check_error(r), None
    if r.status_code not in (200, 201):
        raise Failure("bad-response", f"POST /bundles answered {r.status_code}")
    return r.status_code, "accepted", check_accepted(client, mutant, r, bases)


# -- runs -----------------------------------------------------------------------------------------


def run_bundles(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.fuzz_mutations import build_seeds, mutant

    seeds = build_seeds()
    indices = [int(i) for i in args.only.split(",")] if args.only else list(range(args.n))
    counts: collections.Counter[str] = collections.Counter()
    codes: collections.Counter[str] = collections.Counter()
    accepted: collections.Counter[str] = collections.Counter()
    failures: list[dict[str, Any]] = []
    bad_fp: list[int] = []
    save_dir = Path(args.save_dir)
    with tempfile.TemporaryDirectory(prefix="mcnc-fuzz-") as tmp:
        srv = Server(Path(tmp) / "data", Path(tmp) / "server.log")
        watch = LogWatch(srv.log)
        crashed = None
        try:
            with httpx.Client(base_url=srv.url, timeout=args.timeout) as client:
                bases = {}  # state digest -> base tensors, as registered on the server
                for s in seeds:
                    if s.base_file is not None:
                        b = client.post("/bases", content=s.base_file)
                        assert b.status_code in (200, 201), b.text
                        bases[b.json()["digest"].removeprefix("sha256:")] = s.base
                    r = client.post("/bundles", content=s.data)
                    assert r.status_code in (200, 201), (s.label, r.status_code, r.text)
                watch.new_errors()
                start = time.perf_counter()
                for n_done, i in enumerate(indices, 1):
                    try:
                        mu = mutant(seeds, random.Random(f"{args.seed}:{i}"))
                    except Exception as exc:  # a bug in the fuzzer: loud, but the run goes on
                        failures.append({"seed": args.seed, "index": i, "kind": "fuzzer-error", "detail": repr(exc)})
                        print(f"FAIL seed={args.seed} index={i} fuzzer-error: {exc!r}", flush=True)
                        continue
                    failure: Failure | None = None
                    try:
                        reused: list[str] = []
                        status, code, outcome = probe(client, mu, bases, reused)
                        if reused:
                            counts["closed-connection-retried"] += 1
                        counts[f"{status // 100}xx"] += 1
                        codes[f"{status} {code}"] += 1
                        if outcome is not None:
                            accepted[outcome] += 1
                            if outcome == "fingerprint-bad":
                                bad_fp.append(i)
                                if args.strict_fingerprint:
                                    failure = Failure("fingerprint", "accepted, but its data fail its own fingerprint")
                    except Failure as f:
                        failure = f
                        counts["5xx" if f.kind == "5xx" else f.kind] += 1
                    except httpx.HTTPError as exc:
                        failure = Failure("transport", repr(exc))
                        counts["transport"] += 1
                    log = watch.new_errors()
                    if log is not None:
                        if failure is None:
                            failure = Failure("server-log", log[-3000:])
                        else:
                            failure.detail += "\nserver log:\n" + log[-3000:]
                        counts["server-log"] += 1
                    if srv.proc.poll() is not None:
                        failure = Failure("crash", f"server exited with {srv.proc.returncode}")
                    if args.verbose:
                        print(f"#{i} {mu.seed.label} {len(mu.data)} B: {'; '.join(mu.edits)}")
                        print(f"   -> {dict(codes)} {dict(accepted)} {failure or ''}")
                    if failure is not None:
                        failures.append(_record(i, mu, failure, save_dir, args.seed))
                        lines = [ln for ln in failure.detail.splitlines() if ln.strip()]
                        last = f" [server log: {lines[-1][:200]}]" if len(lines) > 1 else ""
                        print(f"FAIL seed={args.seed} index={i} {failure.kind}: {lines[0][:300]}{last}", flush=True)
                        if failure.kind == "crash":
                            break
                    if n_done % 1000 == 0:
                        rate = n_done / (time.perf_counter() - start)
                        print(f"  {n_done}/{len(indices)} mutants, {rate:.0f}/s, {dict(counts)}", flush=True)
                elapsed = time.perf_counter() - start
        finally:
            crashed = srv.close()
            tail = watch.new_errors()
    if crashed is not None or tail:
        failures.append({"index": None, "kind": "crash" if crashed is not None else "server-log", "detail": tail})
    return {
        "seed": args.seed,
        "mutants": len(indices),
        "seconds": round(elapsed, 1),
        "status_classes": dict(sorted(counts.items())),
        "codes": dict(codes.most_common()),
        "accepted": dict(accepted),
        "accepted_bad_fingerprint": len(bad_fp),
        "accepted_bad_fingerprint_indices": bad_fp[:50],
        "failures": failures,
        "seeds": [{"label": s.label, "bytes": len(s.data)} for s in seeds],
    }


SAVE_PER_KIND = 50
_saved: collections.Counter[str] = collections.Counter()


def _record(i: int, mu: Any, failure: Failure, save_dir: Path, seed: int) -> dict[str, Any]:
    """The failure as a dict; the first ``SAVE_PER_KIND`` of each kind also saved as files."""
    info = {"seed": seed, "index": i, "kind": failure.kind, "detail": failure.detail, "from": mu.seed.label}
    info["edits"] = mu.edits
    if _saved[failure.kind] < SAVE_PER_KIND:
        _saved[failure.kind] += 1
        save_dir.mkdir(parents=True, exist_ok=True)
        (save_dir / f"{i}.mcnc").write_bytes(mu.data)
        (save_dir / f"{i}.json").write_text(json.dumps(info, indent=1))
    return info


def run_schemathesis(args: argparse.Namespace) -> dict[str, Any]:
    """The schemathesis command against an open and a token-protected server; returns both summaries."""
    results: dict[str, Any] = {}
    exe = Path(sys.executable).with_name("schemathesis")
    for label, tokens in (("open", False), ("tokens", True)):
        with tempfile.TemporaryDirectory(prefix="mcnc-st-") as tmp:
            srv = Server(Path(tmp) / "data", Path(tmp) / "server.log", tokens=tokens)
            checks = ST_CHECKS + (ST_AUTH_CHECKS if tokens else [])
            (Path(tmp) / "schemathesis.toml").write_text(st_config(tokens))
            cmd = [str(exe), "--config-file", str(Path(tmp) / "schemathesis.toml"), "run", f"{srv.url}/openapi.json"]
            cmd += ["--seed", str(args.seed)]
            cmd += ["--max-examples", str(args.max_examples), "--workers", "1", "--request-timeout", "60"]
            cmd += ["--report", "junit", "--report-dir", str(Path(tmp) / "report")]
            if tokens:
                cmd += ["-H", f"Authorization: Bearer {TOKEN}"]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
            seconds = time.perf_counter() - start
            crashed = srv.close()
            log = srv.log.read_text(errors="replace")
            reports = list((Path(tmp) / "report").glob("*.xml")) if (Path(tmp) / "report").exists() else []
            junit = reports[0].read_text() if reports else ""
            summary = proc.stdout[proc.stdout.rfind("SUMMARY") :] if "SUMMARY" in proc.stdout else proc.stdout[-3000:]
            print(f"== schemathesis, {label} server: exit {proc.returncode}, {seconds:.0f} s\n{summary}", flush=True)
            if proc.returncode != 0:
                print(proc.stdout[-20000:], proc.stderr[-5000:])
            results[label] = {
                "exit": proc.returncode,
                "seconds": round(seconds, 1),
                "checks": checks,
                "summary": summary,
                "server_crashed": crashed is not None,
                "server_tracebacks": log.count("Traceback"),
                "junit_testcases": junit.count("<testcase"),
            }
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="300 mutants (the test suite)")
    p.add_argument("-n", type=int, default=None, help="mutants (default 10,000; 300 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="mutant i is a function of (seed, i)")
    p.add_argument("--only", default=None, help="comma-separated mutant indices to replay")
    p.add_argument(
        "--strict-fingerprint",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fail on mutants accepted although their data fail their own fingerprint (default: on)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request before it counts as a hang")
    p.add_argument("--save-dir", default="fuzz-failures", help="where failing mutants are written")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("-v", "--verbose", action="store_true", help="print every mutant and its answer")
    p.add_argument("--schemathesis", action="store_true", help="run schemathesis over /openapi.json instead")
    p.add_argument("--max-examples", type=int, default=100, help="schemathesis: cases per operation (--max-examples)")
    args = p.parse_args(argv)
    args.n = args.n if args.n is not None else (300 if args.quick else 10_000)

    if args.schemathesis:
        st = run_schemathesis(args)
        if args.json:
            Path(args.json).write_text(json.dumps({"schemathesis": st}, indent=1))
        bad = [k for k, v in st.items() if v["exit"] != 0 or v["server_crashed"] or v["server_tracebacks"]]
        print(f"schemathesis: {'FAILED ' + ', '.join(bad) if bad else 'no failures'} (seed {args.seed})")
        return 1 if bad else 0

    print(f"fuzzing POST /bundles with {len(args.only.split(',')) if args.only else args.n} mutants, seed {args.seed}")
    res = run_bundles(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(f"\n{res['mutants']} mutants in {res['seconds']} s (seed {res['seed']})")
    print("status classes: " + ", ".join(f"{k} {v}" for k, v in res["status_classes"].items()))
    print("codes:")
    for code, n in res["codes"].items():
        print(f"  {n:6d}  {code}")
    print("accepted, then: " + ", ".join(f"{k} {v}" for k, v in sorted(res["accepted"].items())))
    print(
        f"accepted although they fail their own fingerprint: {res['accepted_bad_fingerprint']}"
        + (f" (e.g. indices {res['accepted_bad_fingerprint_indices'][:10]})" if res["accepted_bad_fingerprint"] else "")
    )
    kinds = collections.Counter(f["kind"] for f in res["failures"])
    print(f"failures: {sum(kinds.values())} {dict(kinds)}" + (f", saved under {args.save_dir}/" if kinds else ""))
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
