"""`_bulk` integrity: 100 MiB bodies arrive upstream with the same SHA-256, in bounded memory.

The proxy runs as a subprocess (`python -m proxy serve`) so that its resident memory can be
sampled on its own, while the client (generating the body as it sends it) and the fake
upstream (hashing what arrives) run in the test process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from .fakes import LAST_CHUNK, FakeUpstream, RawClient, Received, chunk, http_response, proxy_config

REPO_ROOT = Path(__file__).resolve().parents[2]
BODY_SIZE = 100 << 20
RSS_LIMIT = 60 << 20


def bulk_chunks(total: int, seed: int = 7) -> Iterator[bytes]:
    """A deterministic `_bulk` body of exactly `total` bytes, generated 1 MiB at a time."""
    rnd = random.Random(seed)
    vocab = [
        base64.b32encode(rnd.randbytes(rnd.randint(2, 7))).decode().lower() for _ in range(2000)
    ]
    text = " ".join(rnd.choices(vocab, k=300_000)).encode()
    span = len(text) - 256
    n = sent = 0
    while sent < total:
        lines, size = [], 0
        while size < 1 << 20:
            off = (n * 7919) % span
            line = b'{"index":{"_index":"logs","_id":"%d"}}\n{"message":"%s","n":%d}\n' % (
                n,
                text[off : off + 200],
                n,
            )
            lines.append(line)
            size += len(line)
            n += 1
        data = b"".join(lines)[: total - sent]
        sent += len(data)
        yield data


def gzip_pieces() -> Iterator[bytes]:
    """The body as one gzip stream of stored (level 0) deflate blocks.

    Stored blocks keep the wire size at 100 MiB and cost no CPU; the proxy cannot tell them
    from compressed ones, and must neither look inside nor inflate them.
    """
    z = zlib.compressobj(0, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for piece in bulk_chunks(BODY_SIZE):
        yield z.compress(piece)
    yield z.flush()


@dataclass
class ProxyProcess:
    port: int
    process: psutil.Process
    clients: list[RawClient] = field(default_factory=list)

    async def connect(self) -> RawClient:
        client = await RawClient.connect(self.port)
        self.clients.append(client)
        return client


@pytest.fixture
async def proxy_process(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    config = tmp_path / "proxy.yaml"
    raw = proxy_config(upstream.url)
    raw["listen"] = {"host": "127.0.0.1", "port": 0}
    config.write_text(json.dumps(raw))  # JSON is YAML
    with (tmp_path / "proxy.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--config",
            str(config),
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"rerank-proxy listening on"), (tmp_path / "proxy.log").read_text()
        running = ProxyProcess(int(line.rsplit(b":", 1)[1]), psutil.Process(proc.pid))
        yield running
        for client in running.clients:
            await client.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


class RssPeak:
    """Samples a process's RSS every few milliseconds on a thread (the event loop is busy)."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _send(client: RawClient, head: bytes, pieces: Iterator[bytes], *, chunked: bool) -> str:
    """Send a request body as it is generated; return the SHA-256 of the body bytes."""
    digest = hashlib.sha256()
    await client.send(head)
    for piece in pieces:
        digest.update(piece)
        await client.send(chunk(piece) if chunked else piece)
    if chunked:
        await client.send(LAST_CHUNK)
    return digest.hexdigest()


def _head(framing: list[tuple[str, str]]) -> bytes:
    lines = [
        "POST /_bulk?refresh=false HTTP/1.1",
        "Host: proxy",
        "Content-Type: application/x-ndjson",
    ]
    lines += [f"{k}: {v}" for k, v in framing]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("mode", ["content-length", "gzip", "chunked"])
async def test_100mb_bulk_arrives_intact_in_bounded_memory(
    proxy_process: ProxyProcess,
    upstream: FakeUpstream,
    mode: str,
) -> None:
    upstream.store_limit = 0  # hash only: 100 MiB need not be kept
    if mode == "content-length":
        framing = [("Content-Length", str(BODY_SIZE))]
        pieces: Iterator[bytes] = bulk_chunks(BODY_SIZE)
    elif mode == "gzip":
        length = sum(len(piece) for piece in gzip_pieces())
        framing = [("Content-Encoding", "gzip"), ("Content-Length", str(length))]
        pieces = gzip_pieces()
    else:
        framing = [("Transfer-Encoding", "chunked")]
        pieces = bulk_chunks(BODY_SIZE)

    client = await proxy_process.connect()
    # Warm up on the same connection so that the baseline includes the proxy's steady state.
    warm = await client.request(_head([("Content-Length", "2")]) + b"{}")
    assert warm.status == 200
    baseline = proxy_process.process.memory_info().rss

    with RssPeak(proxy_process.process) as rss:
        chunked = mode == "chunked"
        sent = asyncio.create_task(_send(client, _head(framing), pieces, chunked=chunked))
        resp = await client.response(timeout=60)
        digest = await sent
    await client.close()

    assert resp.status == 200
    req = upstream.requests[-1]
    assert req.complete
    assert req.header("Content-Encoding") == ("gzip" if mode == "gzip" else None)
    if mode == "chunked":
        assert req.chunked and req.body_size == BODY_SIZE
    else:
        assert req.header("Content-Length") == dict(framing)["Content-Length"]
    assert req.sha256 == digest
    growth = rss.peak - baseline
    assert growth < RSS_LIMIT, f"proxy RSS grew by {growth / 2**20:.1f} MiB"


async def test_100mb_response_streams_in_bounded_memory(
    proxy_process: ProxyProcess, upstream: FakeUpstream
) -> None:
    async def export(req: Received, writer: asyncio.StreamWriter) -> bool:
        if req.target == "/warm":
            writer.write(http_response(200, [], b"{}"))
            return True
        writer.write(http_response(200, [("Content-Length", str(BODY_SIZE))]))
        for piece in bulk_chunks(BODY_SIZE):
            writer.write(piece)
            await writer.drain()
        return True

    upstream.handler = export
    client = await proxy_process.connect()
    assert (await client.request(b"GET /warm HTTP/1.1\r\nHost: p\r\n\r\n")).status == 200
    baseline = proxy_process.process.memory_info().rss
    expected = hashlib.sha256()
    for piece in bulk_chunks(BODY_SIZE):
        expected.update(piece)

    with RssPeak(proxy_process.process) as rss:
        await client.send(b"POST /_search/scroll HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n")
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert b"\r\nContent-Length: %d\r\n" % BODY_SIZE in head
        got, size = hashlib.sha256(), 0
        while size < BODY_SIZE:
            data = await asyncio.wait_for(client.reader.read(1 << 20), 30)
            assert data, "response broke off"
            got.update(data)
            size += len(data)
    await client.close()

    assert (size, got.hexdigest()) == (BODY_SIZE, expected.hexdigest())
    growth = rss.peak - baseline
    assert growth < RSS_LIMIT, f"proxy RSS grew by {growth / 2**20:.1f} MiB"
