"""One `rerank-proxy eval` run from start to end: a `Plan` in, an `Evaluation` (and files) out.

The order: load the corpus (`--load`), find which judged queries can be scored (a query
whose relevant documents are all absent from the index, or that has none judged relevant, is
reported, not scored as 0), build each query's search (rendering `_rank_eval` templates), run
the engine's order, then each running proxy, then each in-process proxy config (one model
loaded at a time), evaluate every system on the same queries, compare each with the engine's
order, and write the report and the plots. Progress bars (tqdm) only on a terminal and
without `--quiet`.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, load_config, resolve_rule, split_targets
from . import loader, metrics, plots, proxies, report, runner
from .errors import ClusterError, InputError, UsageError
from .judgments import Judgments
from .searches import BodyTemplate, Search, request_search, topic_search


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """A proxy config to run in-process: its system name, file and window for the index."""

    name: str
    path: str
    config: Config
    window: int
    sample: float = 1.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run; built and checked by the CLI."""

    judgments: Judgments
    index: str
    cluster: str  # no credentials
    connection: runner.Connection
    out: Path
    size: int
    primary: str = "nDCG@10"
    proxies: tuple[tuple[str, str], ...] = ()  # (system name, URL)
    configs: tuple[ProxyConfig, ...] = ()
    fields: tuple[str, ...] = ()
    template: BodyTemplate | None = None
    concurrency: int = 4
    limit: int | None = None
    load: bool = False
    quiet: bool = False
    seed: int = 0
    notes: tuple[str, ...] = ()


def proxy_config(path: str, index: str, name: str) -> ProxyConfig:
    """Read a proxy config for an in-process run; UsageError when it would not rerank
    searches on `index` (`ConfigError` for a bad file, as `check-config` reports it)."""
    cfg = load_config(path)
    rule = resolve_rule(cfg.rules, split_targets(index))
    if rule is None:
        raise UsageError(
            f"{path}: the targets of {index!r} resolve to different index rules,"
            " so the proxy would pass these searches through"
        )
    if not rule.enabled:
        raise UsageError(f"{path}: reranking is off for {index!r} (its rule has enabled: false)")
    if rule.mode != "rerank":
        raise UsageError(
            f"{path}: the rule for {index!r} is in {rule.mode} mode: clients get the engine's"
            " order, so there is nothing to evaluate; set mode: rerank"
        )
    listen = dataclasses.replace(
        cfg.listen, host="127.0.0.1", port=0, tls_cert=None, tls_key=None, client_ca=None
    )
    return ProxyConfig(
        name, path, dataclasses.replace(cfg, listen=listen), rule.window, rule.sample
    )


class _Bar:
    """A tqdm progress bar, or nothing (not a terminal, `--quiet`, tqdm not installed)."""

    def __init__(self, total: int, desc: str, quiet: bool, unit: str = "q") -> None:
        self._bar: Any = None
        if quiet or not sys.stderr.isatty():
            return
        try:
            tqdm = importlib.import_module("tqdm").tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)

    def step(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def split_queries(
    judgments: Judgments, present: set[str]
) -> tuple[list[str], list[str], list[str]]:
    """(scorable, absent, no_relevant) judged query ids, in topic order."""
    scorable, absent, no_relevant = [], [], []
    for qid in judgments.judged():
        relevant = judgments.relevant(qid)
        if not relevant:
            no_relevant.append(qid)
        elif relevant & present:
            scorable.append(qid)
        else:
            absent.append(qid)
    return scorable, absent, no_relevant


async def _searches(plan: Plan, client: Any, queries: Sequence[str]) -> list[Search]:
    out = []
    j = plan.judgments
    for qid in queries:
        topic = j.topics[qid]
        if j.format != "rank_eval":
            out.append(
                topic_search(topic, size=plan.size, fields=plan.fields, template=plan.template)
            )
            continue
        if topic.request is not None:
            body: dict[str, Any] = dict(topic.request)
        else:
            what = f"rendering the template of request {qid!r}"
            assert topic.params is not None
            body = await runner.render_template(
                client, plan.connection, plan.cluster, topic.template, topic.params, what
            )
        text = topic.text
        if text is None:
            from ..query_text import extract_query_text

            text = extract_query_text(body.get("query"))
        if text is None:
            raise InputError(
                j.source,
                f"request {qid!r}: its rendered template has no query text the proxy can read;"
                " name the params key that holds it with --query-param",
                topic.line,
            )
        out.append(request_search(topic, body, text, size=plan.size))
    return out


async def execute(plan: Plan) -> report.Evaluation:
    """Run the plan: every system on the same queries; write the report and the plots."""
    j = plan.judgments
    notes = list(plan.notes)
    async with runner.session(plan.connection, plan.concurrency) as client:
        if plan.load:
            if j.corpus is None:
                raise UsageError("--load needs a BEIR directory (--beir) with a corpus")
            bar = _Bar(len(j.corpus), f"loading {plan.index}", plan.quiet, unit="doc")
            try:
                await loader.load_corpus(
                    client, plan.connection, plan.cluster, plan.index, j.corpus, progress=bar.step
                )
            finally:
                bar.close()
        wanted = [d for q in j.judged() for d in j.relevant(q)]
        present = await runner.present_keys(
            client, plan.connection, plan.cluster, plan.index, wanted, key_by_index=j.key_by_index
        )
        scorable, absent, no_relevant = split_queries(j, present)
        scored = scorable[: plan.limit] if plan.limit is not None else scorable
        if not scored:
            raise ClusterError(
                f"no query can be scored: {len(absent)} judged queries have none of their"
                f" relevant documents in {plan.index!r} and {len(no_relevant)} have none judged"
                " relevant (wrong index? --load indexes a BEIR corpus)"
            )
        if plan.limit is not None and len(scorable) > plan.limit:
            notes.append(
                f"--limit {plan.limit}: the first {plan.limit} of {len(scorable)} scorable queries"
            )
        searches = await _searches(plan, client, scored)
        systems = [await _engine(plan, client, searches)]
        for name, url in plan.proxies:
            systems.append(await _proxy(plan, client, searches, name, url))
        for pc in plan.configs:
            systems.append(await _in_process(plan, client, searches, pc))
    return finish(plan, systems, scored, absent, no_relevant, notes)


def finish(
    plan: Plan,
    systems: Sequence[runner.SystemRun],
    scored: Sequence[str],
    absent: Sequence[str],
    no_relevant: Sequence[str],
    notes: Sequence[str],
) -> report.Evaluation:
    """Evaluate the runs, compare them with the engine's order, write the files."""
    headline = metrics.headline(plan.primary, plan.size)
    curve = [m for m in metrics.curve(plan.size) if m not in headline]
    measures = headline + curve
    qrels = plan.judgments.qrels
    scores = {
        s.name: metrics.evaluate(
            qrels,
            {q: metrics.to_run(s.results[q].docs) for q in scored},
            measures,
            list(scored),
        )
        for s in systems
    }
    base = systems[0]
    comparisons = [
        metrics.compare(
            s.name,
            base.name,
            m,
            scores[s.name].per_query[m],
            scores[base.name].per_query[m],
            seed=plan.seed,
        )
        for s in systems[1:]
        for m in headline
    ]
    notes = list(notes)
    for s in systems:
        partial = sum(1 for q in scored if s.results[q].problem)
        if partial:
            notes.append(f"`{s.name}`: {partial} answers timed out or had failed shards (partial)")
        if s.kind == "proxy" and s.standin is None:
            notes.append(f"`{s.name}`: could not tell whether its model {s.model} is the stand-in")
    ev = report.Evaluation(
        judgments=plan.judgments,
        index=plan.index,
        cluster=plan.cluster,
        size=plan.size,
        primary=headline[0],
        measures=tuple(headline),
        curve=tuple(metrics.curve(plan.size)),
        scored=tuple(scored),
        absent=tuple(absent),
        no_relevant=tuple(no_relevant),
        systems=tuple(systems),
        scores=scores,
        comparisons=tuple(comparisons),
        notes=tuple(notes),
    )
    plan.out.mkdir(parents=True, exist_ok=True)
    report.write(ev, plan.out)
    plots.write_plots(ev, plan.out)
    return ev


async def _run(
    plan: Plan, client: Any, searches: Sequence[Search], name: str, url: str, *, proxy: bool
) -> tuple[dict[str, runner.QueryResult], float]:
    bar = _Bar(len(searches), name, plan.quiet)
    try:
        return await runner.run_searches(
            client,
            plan.connection,
            name,
            url,
            plan.index,
            searches,
            concurrency=plan.concurrency,
            proxy=proxy,
            key_by_index=plan.judgments.key_by_index,
            progress=bar.step,
        )
    finally:
        bar.close()


async def _engine(plan: Plan, client: Any, searches: Sequence[Search]) -> runner.SystemRun:
    results, wall = await _run(plan, client, searches, "engine", plan.cluster, proxy=False)
    return runner.SystemRun("engine", "engine", plan.cluster, results, wall)


async def _proxy(
    plan: Plan, client: Any, searches: Sequence[Search], name: str, url: str
) -> runner.SystemRun:
    model, standin = await proxies.proxy_model(client, plan.connection, url)
    results, wall = await _run(plan, client, searches, name, url, proxy=True)
    return runner.SystemRun(name, "proxy", url, results, wall, model=model, standin=standin)


async def _in_process(
    plan: Plan, client: Any, searches: Sequence[Search], pc: ProxyConfig
) -> runner.SystemRun:
    from ..rerank.standin import is_standin

    async with proxies.in_process_proxy(pc.config) as proxy:
        results, wall = await _run(plan, client, searches, pc.name, proxy.url, proxy=True)
        split = proxy.stats()
    return runner.SystemRun(
        pc.name,
        "config",
        runner.split_credentials(pc.config.upstream.url)[0],
        results,
        wall,
        source=pc.path,
        window=pc.window,
        model=pc.config.model.name,
        standin=is_standin(pc.config.model.name),
        time_split=split,
    )
