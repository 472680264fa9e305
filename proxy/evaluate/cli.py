"""`rerank-proxy eval`: the subcommand's arguments (`add_parser`) and its entry (`run`).

`add_parser(subparsers)` registers `eval` on the main parser's subparsers; `run(args)`
checks the options, reads the judgments, runs the evaluation and prints the summary. Exit
status: 0 done, 2 a malformed input file, a bad option or a proxy config with problems (one
line each, no traceback), 1 the cluster, a proxy or the model failed. Nothing heavy is
imported before `run` is called, so `rerank-proxy serve` pays nothing for `eval`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HELP = "measure nDCG & co. of the engine's order vs the reranked order on judged queries"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `eval` subcommand to `subparsers` (from `ArgumentParser.add_subparsers`)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "eval", help=HELP, description=HELP + ". The report goes to --out."
    )
    src = p.add_argument_group("judged queries (one of)")
    src.add_argument("--beir", metavar="DIR", help="BEIR directory (queries.jsonl, qrels/)")
    src.add_argument("--split", default="test", help="BEIR qrels split (default: test)")
    src.add_argument("--topics", metavar="FILE", help="TREC topics: SGML <top>, or qid<TAB>text")
    src.add_argument("--qrels", metavar="FILE", help="TREC qrels: qid 0 docid relevance")
    src.add_argument(
        "--topic-field", default="title", help="SGML topic field used as the query (title)"
    )
    src.add_argument("--rank-eval", metavar="FILE", help="a _rank_eval request body (JSON)")
    src.add_argument(
        "--query-param",
        metavar="NAME",
        help="_rank_eval: the template params key that holds the query text",
    )
    where = p.add_argument_group("cluster and systems")
    where.add_argument("--index", required=True, help="the index (or alias, pattern) searched")
    where.add_argument(
        "--cluster",
        metavar="URL",
        help="the cluster, for the engine's own order (default: the first --config's upstream)",
    )
    where.add_argument(
        "--proxy", metavar="URL", action="append", default=[], help="a running proxy (repeatable)"
    )
    where.add_argument(
        "--config",
        metavar="FILE",
        action="append",
        default=[],
        help="a proxy config run in-process on a loopback port (repeatable; the system is"
        " named after the file)",
    )
    auth = p.add_argument_group("credentials and TLS (as the official clients take them)")
    auth.add_argument("--user", help="basic auth user (the password is asked if not given)")
    auth.add_argument("--password", help="basic auth password")
    auth.add_argument("--api-key", help="API key: the encoded key, or ID:KEY")
    auth.add_argument("--ca-certs", metavar="FILE", help="CA bundle (PEM) to verify TLS with")
    auth.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    search = p.add_argument_group("the search")
    search.add_argument(
        "--fields",
        help="comma-separated fields of the default multi_match (default: the"
        " index's default fields)",
    )
    search.add_argument(
        "--template", metavar="FILE", help="a JSON search body with {{query}} where the text goes"
    )
    search.add_argument(
        "--size",
        type=int,
        help="hits per query (default: the largest --config window, else 100)",
    )
    search.add_argument("--metric", default="nDCG@10", help="primary measure (ir_measures name)")
    search.add_argument("--concurrency", type=int, default=4, help="searches in flight (4)")
    search.add_argument("--timeout", type=float, default=300.0, help="seconds per search (300)")
    search.add_argument("--limit", type=int, help="score only the first N scorable queries")
    search.add_argument("--seed", type=int, default=0, help="seed of the randomization test")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", default="rerank-eval", help="report folder")
    out.add_argument("--load", action="store_true", help="index the BEIR corpus into --index first")
    out.add_argument("--quiet", action="store_true", help="no progress bars, no summary")
    p.set_defaults(handler=run)
    return p


def _names(paths: list[str]) -> list[str]:
    names: list[str] = []
    for path in paths:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem) or "config"
        name, n = base, 2
        while name in names or name == "engine":
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def build_plan(args: argparse.Namespace) -> Any:
    """Check the options and read the inputs into a `pipeline.Plan`."""
    from .errors import UsageError
    from .judgments import load_beir, load_trec
    from .metrics import canonical
    from .pipeline import Plan, proxy_config
    from .rankeval import load_rank_eval
    from .runner import Connection, split_credentials
    from .searches import load_template

    sources = [x for x in (args.beir, args.topics or args.qrels, args.rank_eval) if x]
    if len(sources) != 1:
        raise UsageError("give one of --beir DIR, --topics FILE --qrels FILE, --rank-eval FILE")
    if bool(args.topics) != bool(args.qrels):
        raise UsageError("--topics and --qrels go together")
    for flag, value, low in (("--concurrency", args.concurrency, 1), ("--size", args.size, 1)):
        if value is not None and value < low:
            raise UsageError(f"{flag}: must be >= {low}")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit: must be >= 1")
    if args.fields and args.template:
        raise UsageError("--fields and --template: give one (the template names its fields)")
    if args.rank_eval and (args.fields or args.template):
        raise UsageError(
            "--rank-eval requests bring their own search bodies: no --fields/--template"
        )
    if args.query_param and not args.rank_eval:
        raise UsageError(
            "--query-param names a _rank_eval template parameter: it needs --rank-eval"
        )
    if args.load and not args.beir:
        raise UsageError("--load indexes a BEIR corpus: it needs --beir")
    if args.user and args.api_key:
        raise UsageError("--user and --api-key: give one")
    primary = canonical(args.metric)
    configs = [
        proxy_config(path, args.index, name)
        for path, name in zip(args.config, _names(args.config), strict=True)
    ]
    notes: list[str] = []
    cluster = args.cluster or (configs[0].config.upstream.url if configs else None)
    if not cluster:
        raise UsageError("--cluster URL is needed (or a --config, whose upstream.url is used)")
    for flag, url in [("--cluster", cluster)] + [("--proxy", u) for u in args.proxy]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{flag}: must be an http:// or https:// URL, got {url!r}")
        if flag == "--proxy" and parts.username is not None:
            raise UsageError("--proxy: give credentials with --user/--password or --api-key")
    cluster, url_user, url_password = split_credentials(cluster)
    user, password = args.user or url_user, args.password or url_password
    if user and password is None:
        if not sys.stdin.isatty():
            raise UsageError("--user without --password, and no terminal to ask on")
        password = getpass.getpass(f"password for {user}: ")
    for pc in configs:
        if split_credentials(pc.config.upstream.url)[0] != cluster:
            notes.append(
                f"`{pc.name}` forwards to {split_credentials(pc.config.upstream.url)[0]},"
                f" the engine's order comes from {cluster}"
            )
        if pc.sample < 1:
            notes.append(f"`{pc.name}`: its rule reranks a sample ({pc.sample:g}) of searches only")
    if args.beir:
        judgments = load_beir(args.beir, args.split, with_corpus=args.load)
    elif args.topics:
        judgments = load_trec(args.topics, args.qrels, field=args.topic_field)
    else:
        judgments = load_rank_eval(args.rank_eval, query_param=args.query_param)
    template = load_template(args.template) if args.template else None
    fields = tuple(f.strip() for f in (args.fields or "").split(",") if f.strip())
    size = args.size or (max(pc.window for pc in configs) if configs else 100)
    proxies = [u.rstrip("/") for u in args.proxy]
    proxy_names = (
        ["proxy"] if len(proxies) == 1 else [f"proxy{i}" for i in range(1, len(proxies) + 1)]
    )
    return Plan(
        judgments=judgments,
        index=args.index,
        cluster=cluster,
        connection=Connection.build(
            user=user,
            password=password,
            api_key=args.api_key,
            ca_certs=args.ca_certs,
            insecure=args.insecure,
            timeout_s=args.timeout,
        ),
        out=Path(args.out),
        size=size,
        primary=primary,
        proxies=tuple(zip(proxy_names, proxies, strict=True)),
        configs=tuple(configs),
        fields=fields,
        template=template,
        concurrency=args.concurrency,
        limit=args.limit,
        load=args.load,
        quiet=args.quiet,
        seed=args.seed,
        notes=tuple(notes),
    )


def run(args: argparse.Namespace) -> int:
    """Run `rerank-proxy eval` with parsed `args`; the exit status."""
    from ..config import ConfigError
    from ..errors import ModelLoadError
    from .errors import ClusterError, InputError, UsageError
    from .pipeline import execute

    try:
        plan = build_plan(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    except (InputError, UsageError) as exc:
        print(f"rerank-proxy eval: {exc}", file=sys.stderr)
        return 2
    except ClusterError as exc:
        print(f"rerank-proxy eval: {exc}", file=sys.stderr)
        return 1
    try:
        ev = asyncio.run(execute(plan))
    except (InputError, UsageError) as exc:
        print(f"rerank-proxy eval: {exc}", file=sys.stderr)
        return 2
    except (ClusterError, ModelLoadError) as exc:
        print(f"rerank-proxy eval: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the report folder could not be written
        print(f"rerank-proxy eval: {plan.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if not args.quiet:
        print((plan.out / "report.md").read_text(), end="")
        print(f"\nreport: {plan.out / 'report.md'} ({len(ev.scored)} queries)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m proxy.evaluate.cli ...`: the subcommand on its own (for tests, benches)."""
    parser = argparse.ArgumentParser(prog="rerank-proxy")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
