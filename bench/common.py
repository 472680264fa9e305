"""Shared helpers for the end-to-end benchmarks (search, passthrough, memory).

Owns: starting the local OpenSearch (scripts/engine), indexing SciFact into it, running the
proxy as its own process (`python -m proxy serve`), the aiohttp load generator (run as a
separate process so it never shares the proxy's core), CPU accounting and Markdown output.
Every target is 127.0.0.1; every load loop is bounded in request count and in time.

Also runnable, for the subprocesses the benchmarks start::

    python -m bench.common loadgen SPEC.json OUT.json
    python -m bench.common serve --max-group N -- [proxy serve arguments]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.data import CACHE, REPO, SCIFACT, read_jsonl

ENGINE = "opensearch"
INDEX = "bench-scifact"
LOOPBACK = "127.0.0.1"

# Never go through an http(s)_proxy from the environment: every target is loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- SciFact -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SciFact:
    corpus: dict[str, dict[str, str]]  # id -> {"title", "text"}
    queries: list[str]  # every query text, in file order


def load_scifact() -> SciFact:
    if not SCIFACT.is_dir():
        sys.exit(f"SciFact not found at {SCIFACT} (set RERANK_PROXY_SHARED)")
    corpus = {
        d["_id"]: {"title": d["title"], "text": d["text"]}
        for d in read_jsonl(SCIFACT / "corpus.jsonl.gz")
    }
    queries = [q["text"] for q in read_jsonl(SCIFACT / "queries.jsonl.gz")]
    return SciFact(corpus, queries)


def search_body(query: str, size: int = 10) -> bytes:
    """The client's search: `multi_match` over title and text, top `size` hits."""
    body = {"query": {"multi_match": {"query": query, "fields": ["title", "text"]}}, "size": size}
    return json.dumps(body).encode()


def exact_model() -> Path:
    """The stand-in with the exact mxbai-rerank-xsmall-v1 geometry (built once, ~70-120 s)."""
    from bench.data import exact_model as build

    return build()


# -- HTTP (stdlib, for set-up only) ------------------------------------------------------


def http(
    method: str, url: str, body: bytes | None = None, *, timeout: float = 60.0
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        ctype = "application/x-ndjson" if url.endswith("_bulk") else "application/json"
        req.add_header("Content-Type", ctype)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(method: str, url: str, doc: Any = None, *, timeout: float = 60.0) -> Any:
    status, raw = http(
        method, url, None if doc is None else json.dumps(doc).encode(), timeout=timeout
    )
    if not 200 <= status < 300:
        raise RuntimeError(f"{method} {url}: HTTP {status}: {raw[:300]!r}")
    return json.loads(raw)


# -- the engine --------------------------------------------------------------------------


def ensure_engine() -> str:
    """Start OpenSearch unless it runs (it is left running: other work shares it)."""
    script = [sys.executable, str(REPO / "scripts" / "engine")]
    probe = subprocess.run([*script, "url", ENGINE], capture_output=True, text=True, timeout=60)
    if probe.returncode == 0 and probe.stdout.strip():
        return probe.stdout.strip()
    log(f"starting {ENGINE} (scripts/engine start {ENGINE}) ...")
    proc = subprocess.run(
        [*script, "start", ENGINE],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        sys.exit(f"scripts/engine start {ENGINE} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip()


def engine_pid() -> int | None:
    state = Path(os.environ.get("RERANK_PROXY_STATE", CACHE)) / "engines" / ENGINE / "pid"
    try:
        return int(state.read_text().strip())
    except (OSError, ValueError):
        return None


def index_scifact(url: str, data: SciFact, aliases: Sequence[str] = ()) -> None:
    """Index the SciFact corpus into `INDEX` once (kept between runs), plus aliases."""
    status, raw = http("GET", f"{url}/{INDEX}/_count")
    if status != 200 or json.loads(raw)["count"] != len(data.corpus):
        if status == 200:
            http("DELETE", f"{url}/{INDEX}")
        log(f"indexing {len(data.corpus)} SciFact documents into {INDEX} ...")
        http_json(
            "PUT",
            f"{url}/{INDEX}",
            {
                "settings": {"number_of_shards": 1, "number_of_replicas": 0},
                "mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}},
            },
        )
        lines: list[str] = []
        items = list(data.corpus.items())
        for i, (doc_id, doc) in enumerate(items, 1):
            lines.append(json.dumps({"index": {"_index": INDEX, "_id": doc_id}}))
            lines.append(json.dumps(doc))
            if len(lines) >= 2000 or i == len(items):
                status, raw = http(
                    "POST", f"{url}/_bulk", ("\n".join(lines) + "\n").encode(), timeout=300
                )
                if status != 200 or json.loads(raw).get("errors"):
                    sys.exit(f"bulk indexing into {INDEX} failed: HTTP {status}: {raw[:300]!r}")
                lines = []
        http_json("POST", f"{url}/{INDEX}/_refresh")
    for alias in aliases:
        http_json("PUT", f"{url}/{INDEX}/_alias/{alias}")


# -- the proxy process -------------------------------------------------------------------


@dataclass
class ProxyProcess:
    proc: subprocess.Popen[str]
    url: str
    log_path: Path
    started_s: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def backend(self) -> str:
        """The backend the proxy resolved (from its `loading model ... (backend X, ...)`)."""
        for line in self.log_text().splitlines():
            if "loading model" in line and "(backend " in line:
                return line.split("(backend ", 1)[1].split(",", 1)[0]
        return "?"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def proxy_config(
    upstream: str,
    *,
    model: Path | str = "fake",
    backend: str = "fake",
    rules: Sequence[dict[str, Any]] = (),
    log_level: str = "INFO",
    **model_opts: Any,
) -> dict[str, Any]:
    """A proxy config: reranking only on the given index rules (`defaults` disabled)."""
    return {
        "upstream": {"url": upstream, "read_timeout": 900},
        "model": {"name": str(model), "backend": backend, **model_opts},
        "defaults": {"enabled": False},
        "indices": list(rules),
        "log_level": log_level,
    }


def start_proxy(
    config: dict[str, Any],
    workdir: Path,
    *,
    name: str = "proxy",
    max_group: int | None = None,
    on_spawn: Callable[[int], None] | None = None,
    timeout_s: float = 900.0,
) -> ProxyProcess:
    """Run `python -m proxy serve` on a free loopback port; return once it listens.

    `max_group` runs it through `bench.common serve`, which sets RerankService's
    `max_group` (not a config key). `on_spawn(pid)` is called as soon as the process exists (memory sampling starts there).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = workdir / f"{name}.log"
    if max_group is not None:
        launcher = [sys.executable, "-m", "bench.common", "serve", f"--max-group={max_group}", "--"]
    else:
        launcher = [sys.executable, "-m", "proxy"]
    cmd = [*launcher, "serve", "--config", str(cfg_path), "--listen", f"{LOOPBACK}:0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    with log_path.open("w") as log_fh:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log_fh, text=True, env=env
        )
    assert proc.stdout is not None
    if on_spawn is not None:
        on_spawn(proc.pid)
    ready: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("rerank-proxy listening on "):
                ready.append(line.split()[-1])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not ready:
        proc.kill()
        proc.wait()
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"proxy {name} did not start in {timeout_s:.0f} s:\n{tail}")
    return ProxyProcess(proc, ready[0], log_path, time.monotonic() - t0)


def proxy_metrics(url: str) -> dict[str, int]:
    return dict(http_json("GET", f"{url}/_rerank_proxy/metrics?format=json", timeout=10))


# -- CPU accounting ----------------------------------------------------------------------


def _tree_cpu(pid: int, *, system_only: bool = False) -> float:
    """CPU seconds of a process and its children (kernel time only with `system_only`)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            total += t.system if system_only else t.user + t.system
    return total


def _system_busy() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


@dataclass
class CpuMeter:
    """CPU seconds used by named process trees during a measurement, and by everything
    else on the machine (other people's work: the noise floor of a shared box)."""

    groups: dict[str, int | None]
    _start: dict[str, float] = field(default_factory=dict)
    _busy: float = 0.0
    _children: float = 0.0
    _wall: float = 0.0

    @staticmethod
    def _reaped() -> float:
        """CPU of this process's reaped children: the load generator, once it exited."""
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def _sample(self) -> dict[str, float]:
        out = {}
        for k, pid in self.groups.items():
            if pid:
                out[k] = _tree_cpu(pid)
                out[f"{k}_sys"] = _tree_cpu(pid, system_only=True)
        return out

    def start(self) -> None:
        self._start = self._sample()
        self._busy = _system_busy()
        self._children = self._reaped()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group (and its kernel part, `GROUP_sys`), `loadgen`,
        `other_cores` (average cores used by everything else) and `wall`."""
        now = self._sample()
        out = {k: v - self._start[k] for k, v in now.items()}
        out["loadgen"] = self._reaped() - self._children
        wall = time.monotonic() - self._wall
        busy = _system_busy() - self._busy
        ours = sum(v for k, v in out.items() if not k.endswith("_sys"))
        out["other_cores"] = max(0.0, busy - ours) / (wall or 1)
        out["wall"] = wall
        return out


def wait_idle(pid: int, *, below: float = 0.1, max_s: float = 300.0) -> float:
    """Wait until process `pid` uses under `below` cores over 1 s (its executor may still
    finish work of cancelled requests); return seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        before = _tree_cpu(pid)
        time.sleep(1.0)
        if _tree_cpu(pid) - before < below:
            break
    return time.monotonic() - t0


def machine_line() -> str:
    import psutil

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    psi = ""
    with contextlib.suppress(OSError):
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        psi = f"; CPU pressure (PSI some avg60) {first.split()[2].split('=')[1]}%"
    return (
        f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB;"
        f" load average {load}{psi}; Python {sys.version.split()[0]}"
    )


# -- statistics and output ---------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fmt_ms(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def fmt_ratio(value: float) -> str:
    return "n/a" if math.isnan(value) or math.isinf(value) else f"{value:.2f}x"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def workdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            import shutil

            shutil.rmtree(path, ignore_errors=True)


# -- the load generator (a separate process) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Req:
    method: str
    path: str
    body: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "body": self.body}


@dataclass(slots=True)
class LoadResult:
    latencies_ms: list[float]
    completed: int
    unfinished: int
    elapsed_s: float
    status: dict[str, int]
    x_rerank: dict[str, int]
    errors: dict[str, int]
    took_ms: list[float]
    done_requests: list[int]  # indexes into the request list that completed with 2xx
    by_index: list[tuple[int, float]]  # (n-th request sent, latency ms), completed ones

    @classmethod
    def merge(cls, parts: Sequence[LoadResult]) -> LoadResult:
        """Several runs of the same load as one (interleaved slices of a measurement)."""

        def add(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
            total: Counter[str] = Counter()
            for d in dicts:
                total.update(d)
            return dict(total)

        return cls(
            latencies_ms=[x for p in parts for x in p.latencies_ms],
            completed=sum(p.completed for p in parts),
            unfinished=sum(p.unfinished for p in parts),
            elapsed_s=sum(p.elapsed_s for p in parts),
            status=add(p.status for p in parts),
            x_rerank=add(p.x_rerank for p in parts),
            errors=add(p.errors for p in parts),
            took_ms=[x for p in parts for x in p.took_ms],
            done_requests=[x for p in parts for x in p.done_requests],
            by_index=[x for p in parts for x in p.by_index],
        )

    def first(self, n: int) -> list[float]:
        """Latencies of the first `n` requests sent (one per client: the opening burst)."""
        return [ms for i, ms in self.by_index if i < n]

    @property
    def rps(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.unfinished and set(self.status) <= {"200"}


def run_load(
    base: str,
    requests: Sequence[Req],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    once: bool = False,
    grace_s: float = 30.0,
    warmup_s: float = 0.0,
    timeout_s: float = 600.0,
    pid_out: list[int] | None = None,
) -> LoadResult:
    """Run the aiohttp load generator in its own process and wait for its result.

    Closed loop: `concurrency` workers, each sends its next request when its last one
    answered. No new request starts after `duration_s` or `max_requests`; in-flight ones
    get `grace_s` more, then are cancelled and counted as unfinished. `once`: each request
    of the list is sent at most once (distinct queries: a cold cache), else they cycle.
    """
    if not base.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"load targets must be http://{LOOPBACK}:PORT, not {base}")
    spec = {
        "base": base,
        "requests": [r.to_json() for r in requests],
        "concurrency": concurrency,
        "duration_s": duration_s,
        "max_requests": max_requests,
        "once": once,
        "grace_s": grace_s,
        "warmup_s": warmup_s,
        "timeout_s": timeout_s,
    }
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "bench.common", "loadgen", str(spec_path), str(out_path)]
        proc = subprocess.Popen(cmd, cwd=REPO)
        if pid_out is not None:
            pid_out.append(proc.pid)
        try:
            proc.wait(timeout=warmup_s + duration_s + grace_s + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError("load generator did not finish in time") from None
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed (exit {proc.returncode})")
        out = json.loads(out_path.read_text())
    return LoadResult(**out)


async def _loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    base = spec["base"]
    reqs = spec["requests"]
    conc = int(spec["concurrency"])
    once = bool(spec["once"])
    cap = min(int(spec["max_requests"]), len(reqs) if once else int(spec["max_requests"]))
    latencies: list[float] = []
    took: list[float] = []
    status: Counter[str] = Counter()
    x_rerank: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    done: list[int] = []
    by_index: list[tuple[int, float]] = []
    counter = 0
    last_end = 0.0
    timeout = aiohttp.ClientTimeout(total=float(spec["timeout_s"]))
    connector = aiohttp.TCPConnector(limit=conc, limit_per_host=conc)
    headers = {"Content-Type": "application/json"}
    # Like the official clients' defaults: no `Accept-Encoding: gzip` (aiohttp would add it,
    # and both the engine and the proxy would then spend CPU compressing).
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
    ) as session:

        async def one(i: int, record: bool) -> None:
            nonlocal last_end
            r = reqs[i % len(reqs)]
            body = r["body"].encode() if r["body"] is not None else None
            t0 = time.perf_counter()
            try:
                async with session.request(
                    r["method"], base + r["path"], data=body, headers=headers
                ) as resp:
                    await resp.read()
                    code = resp.status
                    outcome = resp.headers.get("X-Rerank")
                    took_ms = resp.headers.get("X-Rerank-Took-Ms")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if record:
                    errors[type(exc).__name__] += 1
                return
            t1 = time.perf_counter()
            if not record:
                return
            latencies.append((t1 - t0) * 1000)
            status[str(code)] += 1
            if outcome is not None:
                x_rerank[outcome] += 1
            if took_ms is not None:
                took.append(float(took_ms))
            if 200 <= code < 300:
                done.append(i % len(reqs))
            by_index.append((i, (t1 - t0) * 1000))
            last_end = t1

        warm_end = time.perf_counter() + float(spec["warmup_s"])

        async def warm_worker(w: int) -> None:
            i = w
            while time.perf_counter() < warm_end:
                await one(i, record=False)
                i += conc

        if spec["warmup_s"] > 0:
            await asyncio.gather(*(warm_worker(w) for w in range(conc)))

        t_start = time.perf_counter()
        stop_at = t_start + float(spec["duration_s"])

        async def worker() -> None:
            nonlocal counter
            while time.perf_counter() < stop_at and counter < cap:
                i = counter
                counter += 1
                await one(i, record=True)

        tasks = [asyncio.create_task(worker()) for _ in range(conc)]
        deadline = float(spec["duration_s"]) + float(spec["grace_s"])
        finished, pending = await asyncio.wait(tasks, timeout=deadline)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in finished:
            t.result()
        unfinished = counter - len(latencies) - sum(errors.values())
    end = last_end if last_end else time.perf_counter()
    return {
        "latencies_ms": latencies,
        "completed": len(latencies),
        "unfinished": unfinished,
        "elapsed_s": end - t_start,
        "status": dict(status),
        "x_rerank": dict(x_rerank),
        "errors": dict(errors),
        "took_ms": took,
        "done_requests": done,
        "by_index": by_index,
    }


def _serve_with_max_group(max_group: int, argv: list[str]) -> int:
    """`proxy serve` with RerankService(max_group=N): N = window gives one search per
    model group, i.e. no cross-request batching (the service has no config key for it)."""
    import proxy.rerank.service as service
    from proxy.cli import main

    base = service.RerankService

    class OneSearchPerGroup(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["max_group"] = max_group
            super().__init__(*args, **kwargs)

    service.RerankService = OneSearchPerGroup  # type: ignore[misc]
    return main(argv)


def py_spy() -> str | None:
    """The py-spy executable (`pip install py-spy`; or set PY_SPY), if any."""
    import shutil

    return os.environ.get("PY_SPY") or shutil.which("py-spy")


@contextlib.contextmanager
def sampled(pid: int, out: Path, seconds: float) -> Iterator[None]:
    """Sample `pid` with py-spy while the block runs: 250 Hz, without pausing it, and only
    while it holds the GIL (`--gil`): Python-level CPU. Time inside send/recv is left out
    on purpose: on a shared 2-core box a thread preempted inside a syscall looks busy to a
    sampler; the kernel's share is measured instead as the process's system CPU time."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy not found (pip install py-spy, or set PY_SPY)")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(math.ceil(seconds) + 1)]
    cmd += ["--rate", "250", "--nonblocking", "--gil", "--function", "--format", "raw"]
    cmd += ["-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # attach
    try:
        yield
    finally:
        try:
            _, err = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            log(f"py-spy failed ({proc.returncode}): {err[-500:]}")


def _area(frame: str) -> str:
    where = frame.rsplit("(", 1)[-1]
    for key, name in (
        ("proxy/", "rerank-proxy code"),
        ("aiohttp/", "aiohttp"),
        ("multidict/", "aiohttp"),
        ("yarl/", "aiohttp"),
        ("asyncio/", "asyncio event loop"),
        ("selectors", "asyncio event loop"),
        ("logging/", "logging"),
        ("json/", "json (stdlib)"),
    ):
        if key in where:
            return name
    return "other"


def sample_report(path: Path, *, top: int = 25) -> str:
    """py-spy collapsed stacks -> share of samples by area (leaf frame), by function
    itself (self) and by function including callees (inclusive)."""
    self_n: Counter[str] = Counter()
    incl_n: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return "(no samples written)"
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        total += n
        self_n[frames[-1]] += n
        areas[_area(frames[-1])] += n
        for f in set(frames):
            incl_n[f] += n
    if not total:
        return "(no samples)"

    def rows(counter: Counter[str]) -> list[tuple[str, str]]:
        return [(f"{n / total:.1%}", f"`{f}`") for f, n in counter.most_common(top)]

    return "\n".join(
        [
            f"{total} samples (py-spy --gil, 250 Hz, non-blocking): Python-level CPU only;"
            " kernel time in send/recv is the `sys` share of the CPU columns.",
            "",
            md_table(["share", "area (where the CPU was: leaf frame)"], rows(areas)),
            "",
            md_table(["self", "function"], rows(self_n)),
            "",
            md_table(["inclusive", "function"], rows(incl_n)),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.common")
    sub = parser.add_subparsers(dest="command", required=True)
    lg = sub.add_parser("loadgen")
    lg.add_argument("spec")
    lg.add_argument("out")
    sv = sub.add_parser("serve")
    sv.add_argument("--max-group", type=int, required=True)
    sv.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "loadgen":
        spec = json.loads(Path(args.spec).read_text())
        Path(args.out).write_text(json.dumps(asyncio.run(_loadgen(spec))))
        return 0
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    return _serve_with_max_group(args.max_group, rest)


if __name__ == "__main__":
    sys.exit(main())
