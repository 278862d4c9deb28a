"""Serving benchmark: warm hits per tier against nginx serving the same bytes, interleaved rounds.

One ~100M-parameter model (``--quick``: ~8M). Servers, each its own process on 127.0.0.1, all up
at once:

- ``memory``: ``python -m service`` (what ``mcnc serve`` runs) with tier 1 warm;
- ``redis``: a second ``python -m service`` with ``MCNC_MEMORY_CACHE_BYTES=0`` sharing the first's
  Redis entry (tier 2 warm), when a Redis answers at ``--redis``;
- ``redis_limit``: the limit Redis itself sets here: a minimal HTTP reader (its own process, one
  thread per connection) that GETs the very chunk keys the Redis-tier server reads (redis-py with
  hiredis) and writes each to the socket as it comes, no check, no read-ahead; the Redis tier's
  target is 0.8x of it;
- ``redis_before`` (with ``--against CHECKOUT``; ``redis_before_2``... for more): a further
  ``python -m service``, run from another checkout (the code before a change, e.g. ``git worktree
  add /tmp/mcnc-old <commit>``), on a tier-2 entry of its own (its own prefix, written by its first
  request in that code's format), so a change to the Redis tier is measured against the code before
  it in the same rounds;
- ``nginx``: the Debian ``nginx`` binary, started here (``daemon off``, generated ``nginx.conf``),
  serving the very response body as a static file, once with ``sendfile on`` (its default
  configuration) and once with ``sendfile off``; skipped, and said so, when nginx is not installed.

Client: raw sockets, HTTP/1.1 keep-alive, ``recv_into`` a preallocated 1 MiB buffer per
connection (bytes counted, not kept), one thread per connection, so the client does about the
least work possible per byte. For each concurrency level (``--clients``, default 1,4,16) every
round measures each server once, in an order that rotates between rounds, so background load
lands on all of them; throughput is total body bytes / wall time. Reported: median GB/s per
server and the median (min-max) over rounds of each tier's ratio to nginx in the same round.
The cold request that fills the tiers is reported too (time to first byte, MB/s).

Usage: ``python benchmarks/serving.py [--quick] [--redis URL|''] [--rounds N] [--against CHECKOUT] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

BUF = 1 << 20  # client receive buffer per connection


def build_bundle(layers: int, width: int) -> tuple[bytes, int]:
    import torch
    from torch import nn

    import mcnc_core as m

    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    m.compress(net, m.MCNCConfig())
    bundle = m.export_bundle(net)
    return bundle.to_bytes(), bundle.num_params


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children's threads so far (0 when unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its direct children (nginx's workers)."""
    try:
        kids = [int(k) for t in Path(f"/proc/{pid}/task").iterdir() for k in (t / "children").read_text().split()]
    except OSError:
        kids = []
    return _cpu_seconds(pid) + sum(_cpu_seconds(k) for k in kids)


def wait_ready(proc: subprocess.Popen[bytes], url: str, what: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)


class Server:
    """A server subprocess; ``ports`` maps a name to its loopback port."""

    def __init__(self, cmd: list[str], env: dict[str, str], ports: dict[str, int], ready: list[str]) -> None:
        self.ports = ports
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for url in ready:
                wait_ready(self.proc, url, cmd[0])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def mcnc_server(data_dir: Path, root: Path = ROOT, **env: str) -> Server:
    """``python -m service`` (``mcnc serve``: uvicorn with its defaults) from checkout ``root`` on a free
    loopback port."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MCNC_")}
    full_env.update(env, MCNC_DATA_DIR=str(data_dir), PYTHONPATH=str(root))
    cmd = [sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"]
    return Server(cmd, full_env, {"mcnc": port}, [f"http://127.0.0.1:{port}/health/live"])


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


NGINX_CONF = """\
daemon off;
worker_processes auto;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/octet-stream;
    keepalive_requests 100000;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{ listen 127.0.0.1:{on}; root {root}; sendfile on; tcp_nopush on; }}
    server {{ listen 127.0.0.1:{off}; root {root}; sendfile off; }}
}}
"""


def nginx_server(binary: str, root: Path, work: Path) -> Server:
    """nginx with the Debian package's ``sendfile on`` and ``worker_processes auto``, and a ``sendfile off``
    twin, both serving ``root``."""
    work.mkdir(parents=True, exist_ok=True)
    ports = {"nginx": free_port(), "nginx_nosendfile": free_port()}
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, root=root, on=ports["nginx"], off=ports["nginx_nosendfile"]))
    (root / "ping").write_text("ok")
    for p in (root, *root.parents):  # workers run as nobody when started by root
        if p == Path(tempfile.gettempdir()):
            break
        p.chmod(0o755)
    ready = [f"http://127.0.0.1:{p}/ping" for p in ports.values()]
    return Server([binary, "-p", str(work), "-c", str(conf)], dict(os.environ), ports, ready)


def redis_reader_main(port: int, url: str, prefix: str) -> None:
    """The ``redis_limit`` server: ``GET /ping`` answers ``ok``; any other GET streams the tier-2
    entry under ``prefix`` (there is one), chunk after chunk, straight from Redis to the socket."""
    import redis

    client = redis.Redis.from_url(url)
    metas = list(client.scan_iter(match=prefix + "w:*:meta", count=1000))
    if len(metas) != 1:
        raise SystemExit(f"expected one tier-2 entry under {prefix!r}, found {len(metas)}")
    meta = {k.decode(): v.decode() for k, v in client.hgetall(metas[0]).items()}
    total, chunk = int(meta["total"]), int(meta["chunk"])
    base = metas[0].decode().removesuffix(":meta")
    keys = [f"{base}:{i}" for i in range(-(-total // chunk))]

    def serve(conn: socket.socket) -> None:
        with conn:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                if head.split(b" ", 2)[1] == b"/ping":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    continue
                conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
                for key in keys:
                    conn.sendall(client.get(key))

    with socket.create_server(("127.0.0.1", port)) as srv:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()


def redis_limit_server(url: str, prefix: str) -> Server:
    port = free_port()
    cmd = [sys.executable, __file__, "--redis-reader", str(port), url, prefix]
    return Server(cmd, dict(os.environ), {"redis_limit": port}, [f"http://127.0.0.1:{port}/ping"])


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: mcnc-bench\r\n\r\n".encode()


def get_body(sock: socket.socket, path: str, buf: memoryview, first: list[float] | None = None) -> int:
    """One GET on a keep-alive socket; reads the whole body into ``buf`` (overwritten), returns its length."""
    sock.sendall(_request(path))
    head = b""
    while b"\r\n\r\n" not in head:
        n = sock.recv_into(buf)
        if n == 0:
            raise ConnectionError("connection closed in the headers")
        if first is not None and not head:
            first.append(time.perf_counter())
        head += bytes(buf[:n])
    head, _, rest = head.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if lines[0].split()[1] != "200":
        raise ConnectionError(f"{path}: {lines[0]}")
    length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:]) if k.lower() == "content-length")
    got = len(rest)
    while got < length:
        n = sock.recv_into(buf, min(len(buf), length - got))
        if n == 0:
            raise ConnectionError("connection closed in the body")
        got += n
    return length


def load(port: int, path: str, clients: int, per_client: int) -> tuple[float, int, int]:
    """``clients`` connections, each GETting ``path`` ``per_client`` times: ``(seconds, bytes, errors)``."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    totals = [0] * clients
    errors = [0] * clients

    def one(i: int) -> None:
        buf = memoryview(bytearray(BUF))
        start.wait()
        for _ in range(per_client):
            try:
                totals[i] += get_body(socks[i], path, buf)
            except OSError:
                errors[i] += 1
                return

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    for s in socks:
        s.close()
    return seconds, sum(totals), sum(errors)


def cold(port: int, path: str) -> dict[str, float]:
    """The first request (reconstruction streamed as it happens): time to first byte and MB/s."""
    buf = memoryview(bytearray(BUF))
    first: list[float] = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.perf_counter()
        n = get_body(s, path, buf, first)
        secs = time.perf_counter() - t0
    return {"ttfb_ms": (first[0] - t0) * 1e3, "MB_s": n / secs / 1e6, "bytes": n}


def _clean_redis(url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=prefix + "*", count=1000))
    if keys:
        r.delete(*keys)


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def _redis_pid(url: str) -> int | None:
    """The Redis server's pid when it runs on this machine (its CPU is part of tier 2's cost)."""
    import redis

    pid = int(redis.Redis.from_url(url).info("server")["process_id"])
    try:  # the same pid on this machine may be another process when Redis runs elsewhere
        return pid if "redis" in Path(f"/proc/{pid}/comm").read_text() else None
    except OSError:
        return None


def environment() -> str:
    """What ``mcnc serve`` runs with here: uvicorn picks uvloop and httptools when installed, redis-py hiredis."""
    from importlib.util import find_spec

    have = {m: find_spec(m) is not None for m in ("uvloop", "httptools", "hiredis")}
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs, load average {load}; uvicorn loop {'uvloop' if have['uvloop'] else 'asyncio'}, "
            f"http {'httptools' if have['httptools'] else 'h11'}; redis-py parser "
            f"{'hiredis' if have['hiredis'] else 'pure Python'}")  # fmt: skip


def hash_rates() -> dict[str, float]:
    """CPU ns per byte of each tier-2 chunk digest on an 8 MiB chunk here, now (best of 3 x 8 chunks;
    this thread's CPU time, so a busy machine's waits are not counted: what the server pays per byte)."""
    import blake3

    data = os.urandom(8 << 20)
    fns = {"sha256": lambda: hashlib.sha256(data).digest(), "blake3": lambda: blake3.blake3(data).digest()}
    out = {}
    for name, fn in fns.items():
        best = float("inf")
        for _ in range(3):
            t0 = time.thread_time()
            for _ in range(8):
                fn()
            best = min(best, (time.thread_time() - t0) / (8 * len(data)) * 1e9)
        out[name] = best
    return out


def _reconstructions(url: str) -> float:
    return sum(_metric(url, f'mcnc_reconstructions_total{{kind="{kind}"}}') for kind in ("full", "partial"))


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    layers, width = (2, 2048) if args.quick else (6, 4096)
    t0 = time.perf_counter()
    data, n_params = build_bundle(layers, width)
    print(f"# model: {n_params / 1e6:.1f}M params, bundle {len(data) / 1e6:.2f} MB "
          f"(built in {time.perf_counter() - t0:.1f}s)", flush=True)  # fmt: skip
    out: dict[str, object] = {"params": n_params, "clients": args.clients, "rounds": args.rounds}
    out["environment"] = environment()
    print(f"# {out['environment']}", flush=True)
    out["hash_ns_per_byte"] = hash_rates()
    print("# chunk digests, CPU ns/byte (8 MiB, best of 3): "
          + ", ".join(f"{k} {v:.2f}" for k, v in out["hash_ns_per_byte"].items()), flush=True)  # fmt: skip
    redis_url = args.redis if args.redis and _redis_answers(args.redis) else None
    if args.redis and redis_url is None:
        print(f"# redis tier: skipped (no Redis answers at {args.redis})")
    elif not args.redis:
        print("# redis tier: skipped (--redis '')")
    prefix = f"mcnc-bench-{uuid.uuid4().hex[:8]}:"
    shared = {"MCNC_REDIS_URL": redis_url, "MCNC_REDIS_PREFIX": prefix} if redis_url else {}
    servers: list[Server] = []
    targets: dict[str, tuple[int, str]] = {}  # name -> (port, path)
    pids: dict[str, int] = {}  # name -> the process whose CPU is counted
    warm_reconstructions: dict[str, float] = {}  # Redis-tier server url -> its reconstructions once warm
    try:
        mem = mcnc_server(work / "mem", MCNC_MEMORY_CACHE_BYTES=str(4 << 30), **shared)
        servers.append(mem)
        pids["memory"] = mem.proc.pid
        url = f"http://127.0.0.1:{mem.ports['mcnc']}"
        httpx.post(url + "/bundles", params={"name": "m"}, content=data, timeout=600).raise_for_status()
        out["cold"] = cold(mem.ports["mcnc"], "/models/m/weights")  # fills tier 1, and tier 2 if any
        body = httpx.get(url + "/models/m/weights", timeout=600).content
        digest = hashlib.sha256(body).hexdigest()
        out["bytes"] = len(body)
        got = b""
        targets["memory"] = (mem.ports["mcnc"], "/models/m/weights")
        if redis_url:
            red = mcnc_server(work / "redis", MCNC_MEMORY_CACHE_BYTES="0", **shared)
            servers.append(red)
            pids["redis"] = red.proc.pid
            rurl = f"http://127.0.0.1:{red.ports['mcnc']}"
            httpx.post(rurl + "/bundles", params={"name": "m"}, content=data, timeout=600).raise_for_status()
            got = httpx.get(rurl + "/models/m/weights", timeout=600).content
            assert hashlib.sha256(got).hexdigest() == digest, "tier 2 served other bytes"
            targets["redis"] = (red.ports["mcnc"], "/models/m/weights")
            warm_reconstructions[rurl] = _reconstructions(rurl)  # 0: the entry was the memory server's
            for n, checkout in enumerate(args.against or [], 1):  # each on an entry in its own format
                name = "redis_before" + ("" if n == 1 else f"_{n}")
                env = {"MCNC_REDIS_URL": redis_url, "MCNC_REDIS_PREFIX": f"{prefix}{name}:"}
                old = mcnc_server(work / name, root=Path(checkout), MCNC_MEMORY_CACHE_BYTES="0", **env)
                servers.append(old)
                pids[name] = old.proc.pid
                burl = f"http://127.0.0.1:{old.ports['mcnc']}"
                httpx.post(burl + "/bundles", params={"name": "m"}, content=data, timeout=600).raise_for_status()
                got = httpx.get(burl + "/models/m/weights", timeout=600).content  # reconstructs, fills its entry
                assert hashlib.sha256(got).hexdigest() == digest, "the code before served other bytes"
                got = httpx.get(burl + "/models/m/weights", timeout=600).content
                assert hashlib.sha256(got).hexdigest() == digest, "the code before's tier 2 served other bytes"
                targets[name] = (old.ports["mcnc"], "/models/m/weights")
                print(f"# {name}: {checkout}", flush=True)
                warm_reconstructions[burl] = _reconstructions(burl)
            lim = redis_limit_server(redis_url, prefix)
            servers.append(lim)
            pids["redis_limit"] = lim.proc.pid
            got = httpx.get(f"http://127.0.0.1:{lim.ports['redis_limit']}/weights", timeout=600).content
            assert hashlib.sha256(got).hexdigest() == digest, "the Redis reader served other bytes"
            targets["redis_limit"] = (lim.ports["redis_limit"], "/weights")
        binary = None if args.no_nginx else find_nginx()
        if binary is None:
            why = "--no-nginx" if args.no_nginx else "nginx is not installed (apt-get install nginx-light)"
            print(f"# nginx: skipped ({why}); absolute numbers only")
        else:
            root = work / "static"
            root.mkdir()
            (root / "weights.safetensors").write_bytes(body)
            ngx = nginx_server(binary, root, work / "nginx")
            servers.append(ngx)
            pids.update(nginx=ngx.proc.pid, nginx_nosendfile=ngx.proc.pid)
            for name, port in ngx.ports.items():
                got = httpx.get(f"http://127.0.0.1:{port}/weights.safetensors", timeout=600).content
                assert hashlib.sha256(got).hexdigest() == digest
                targets[name] = (port, "/weights.safetensors")
        del body, got
        rounds: dict[str, dict[str, list[float]]] = {str(c): {t: [] for t in targets} for c in args.clients}
        rpid = _redis_pid(redis_url) if redis_url else None
        cpu: dict[str, list[list[float]]] = {t: [] for t in targets}  # [server, redis, client] ns per byte
        errors = 0
        names = list(targets)
        for r in range(args.rounds):
            for c in args.clients:
                # each measurement moves at least ~1 GB (quick: 0.1 GB), split over the connections
                per_client = max(1, -(-(args.min_bytes // out["bytes"]) // c))  # type: ignore[operator]
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    port, path = targets[name]
                    before = (tree_cpu(pids[name]), _cpu_seconds(rpid) if rpid else 0.0, time.process_time())
                    secs, n, err = load(port, path, c, per_client)
                    after = (tree_cpu(pids[name]), _cpu_seconds(rpid) if rpid else 0.0, time.process_time())
                    cpu[name].append([(b - a) / n * 1e9 for a, b in zip(before, after, strict=True)])
                    errors += err
                    rounds[str(c)][name].append(n / secs / 1e9)
            print(f"# round {r + 1}/{args.rounds} done", flush=True)
        out["gb_s"] = rounds
        out["cpu_ns_per_byte"] = {t: [statistics.median(x[k] for x in v) for k in range(3)] for t, v in cpu.items()}
        out["errors"] = errors
        if warm_reconstructions:  # nothing reconstructed while measured: every byte came from tier 2
            out["redis_server_reconstructions"] = sum(_reconstructions(u) - n for u, n in warm_reconstructions.items())
    finally:
        for s in reversed(servers):
            s.close()
        if redis_url:
            _clean_redis(redis_url, prefix)
    return out


def ratios(values: dict[str, list[float]], tier: str, base: str) -> list[float]:
    return [a / b for a, b in zip(values[tier], values[base], strict=True)]


def report(out: dict[str, object]) -> None:
    c = out["cold"]
    print(f"cold (first request, reconstructs while streaming): TTFB {c['ttfb_ms']:.1f} ms, {c['MB_s']:.0f} MB/s")  # type: ignore[index]
    gb: dict[str, dict[str, list[float]]] = out["gb_s"]  # type: ignore[assignment]
    measured = list(next(iter(gb.values())))
    tiers = [t for t in ("memory", "redis") if t in measured] + [t for t in measured if t.startswith("redis_before")]
    bases = [b for b in ("nginx", "nginx_nosendfile", "redis_limit") if b in next(iter(gb.values()))]
    cols = [*tiers, *bases]
    print(f"\nmedian GB/s over {out['rounds']} rounds ({out['bytes'] / 1e6:.0f} MB body, {out['errors']} errors)")  # type: ignore[operator]
    print(f"{'clients':>8}" + "".join(f"{t:>18}" for t in cols))
    for clients, vals in gb.items():
        print(f"{clients:>8}" + "".join(f"{statistics.median(vals[t]):>18.2f}" for t in cols))
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for base in bases:
        print(f"\nratio to {base}: median (min-max) over rounds")
        print(f"{'clients':>8}" + "".join(f"{t:>22}" for t in tiers))
        for clients, vals in gb.items():
            cells = []
            for t in tiers:
                r = ratios(vals, t, base)
                summary.setdefault(base, {}).setdefault(t, {})[clients] = statistics.median(r)
                cells.append(f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")
            print(f"{clients:>8}" + "".join(f"{cell:>22}" for cell in cells))
    out["ratio_median"] = summary
    if "nginx" in summary:
        met = {"memory": 1.0, "redis": 0.8}
        for t in (t for t in tiers if t in met):
            worst = min(summary["nginx"][t].values())
            verdict = "met" if worst >= met[t] else "NOT met"
            print(f"target {t} >= {met[t]:.1f}x nginx: {verdict} (lowest median ratio {worst:.2f})")
    if "redis_limit" in summary and "redis" in tiers:
        worst = min(summary["redis_limit"]["redis"].values())
        verdict = "met" if worst >= 0.8 else "NOT met"
        print(f"target redis >= 0.8x the Redis reader: {verdict} (lowest median ratio {worst:.2f})")
    for before in (t for t in tiers if t.startswith("redis_before")):
        print(f"\nredis / {before} (this code over that checkout, same round): median (min-max)")
        for clients, vals in gb.items():
            r = ratios(vals, "redis", before)
            print(f"{clients:>8}  {statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")
    print("\nCPU per body byte, ns (median over measurements; clock ticks of 10 ms, so rough):")
    print(f"{'target':>18}{'server':>10}{'redis':>10}{'client':>10}")
    for t, (srv, red, cli) in out["cpu_ns_per_byte"].items():  # type: ignore[attr-defined]
        print(f"{t:>18}{srv:>10.2f}{red:>10.2f}{cli:>10.2f}")
    if "redis_server_reconstructions" in out:
        print(f"redis-tier server reconstructions while measured: {out['redis_server_reconstructions']:.0f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a ~8M-parameter model, 2 rounds, 1 and 4 clients")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="Redis for the tier-2 server ('' to skip)")
    p.add_argument("--clients", default=None, help="concurrency levels, comma-separated (default 1,4,16)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 2)")
    p.add_argument("--no-nginx", action="store_true", help="measure the mcnc tiers only")
    p.add_argument("--against", action="append", help="a checkout whose Redis tier is measured too (repeatable)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--redis-reader", nargs=3, metavar=("PORT", "URL", "PREFIX"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.redis_reader:
        redis_reader_main(int(args.redis_reader[0]), args.redis_reader[1], args.redis_reader[2])
        return 0
    args.clients = [int(c) for c in (args.clients or ("1,4" if args.quick else "1,4,16")).split(",")]
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.min_bytes = (100 if args.quick else 1000) << 20
    with tempfile.TemporaryDirectory(prefix="mcnc-serving-") as tmp:
        out = run(args, Path(tmp))
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
