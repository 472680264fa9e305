"""One metrics view over `serve --workers N`: each worker's samples, labelled `worker`.

A scrape of the shared port reaches one worker at random. So that it sees every worker, each
worker also serves its own exposition on a private loopback port (that port serves nothing
else) and writes the address into the supervisor's directory (`RERANK_PROXY_WORKER_DIR`).
The worker a scrape reaches asks every sibling there, parses the answers with
`prometheus_client`'s parser, adds a `worker` label to every sample and serves the union,
families kept together, as one valid exposition. A sibling that does not answer within 2 s
is left out and counted (`rerank_proxy_worker_scrape_errors_total`), never a failed scrape.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from .metrics import Metrics

logger = logging.getLogger(__name__)
DIR_ENV, ID_ENV = "RERANK_PROXY_WORKER_DIR", "RERANK_PROXY_WORKER_ID"


def worker_identity() -> tuple[Path, str] | None:
    """(the supervisor's directory, this worker's id) when running as a worker."""
    directory, ident = os.environ.get(DIR_ENV), os.environ.get(ID_ENV)
    return (Path(directory), ident) if directory and ident else None


def announce(directory: Path, ident: str, url: str) -> None:
    """Publish this worker's private address for its siblings."""
    tmp = directory / f"worker-{ident}.url.tmp"
    tmp.write_text(url, encoding="utf-8")
    tmp.replace(directory / f"worker-{ident}.url")


def siblings(directory: Path) -> dict[str, str]:
    out = {}
    for path in sorted(directory.glob("worker-*.url")):
        ident = path.name[len("worker-") : -len(".url")]
        out[ident] = path.read_text(encoding="utf-8").strip()
    return out


class _Merged:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def merge(expositions: Iterable[tuple[str, str]]) -> bytes:
    """The union of (worker id, exposition text) pairs, every sample labelled `worker`."""
    merged: dict[str, Metric] = {}
    for ident, text in expositions:
        for family in text_string_to_metric_families(text):
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type)
            into.samples.extend(
                Sample(s.name, {"worker": ident, **s.labels}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(merged.values())))
    return generate_latest(registry)


async def serve_own_metrics(metrics: Metrics) -> web.AppRunner:
    """A loopback-only app answering this worker's own exposition (nothing else: it is not
    a way around the listener's TLS or client certificates)."""

    async def own(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/_rerank_proxy/metrics", own)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def gather(directory: Path, own: tuple[str, bytes]) -> tuple[bytes, int]:
    """Every worker's exposition merged, and how many siblings did not answer in 2 s."""
    ident, text = own
    texts = [(ident, text.decode())]
    missing = 0
    others = {k: v for k, v in siblings(directory).items() if k != ident}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:

        async def one(url: str) -> str:
            async with http.get(f"{url}/_rerank_proxy/metrics") as resp:
                resp.raise_for_status()
                return await resp.text()

        results = await asyncio.gather(*(one(u) for u in others.values()), return_exceptions=True)
    for other, result in zip(others, results, strict=True):
        if isinstance(result, BaseException):
            missing += 1
            logger.info("worker %s did not answer the metrics scrape: %s", other, result)
        else:
            texts.append((other, result))
    return merge(texts), missing
