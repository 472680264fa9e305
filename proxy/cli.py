"""Command line: `rerank-proxy serve | model-server | eval | probe | check-config | config-table`.

Precedence: the config file, then environment variables, then flags. Every config key is an
environment variable (`RERANK_PROXY_` + the key path in capitals, levels joined by `__`:
`RERANK_PROXY_UPSTREAM__CA_FILE`), and every deployment flag has its own too
(`RERANK_PROXY_LISTEN`, `_UPSTREAM`, `_MODEL`, ...); a `RERANK_PROXY_*` variable that is
neither is an error. Config problems are printed one per line and exit with status 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from . import __version__
from .config import (
    Config,
    ConfigError,
    ListenConfig,
    config_table,
    env_overrides,
    load_config,
    merge_raw,
    parse_config,
    read_raw,
)
from .preflight import preflight

logger = logging.getLogger("proxy")


def _env(name: str) -> str | None:
    return os.environ.get(f"RERANK_PROXY_{name}") or None


def _parse_listen(value: str, base: ListenConfig) -> ListenConfig:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError([f"--listen: expected HOST:PORT, got {value!r}"])
    return dataclasses.replace(base, host=host.strip("[]"), port=int(port))


def build_config(args: argparse.Namespace) -> Config:
    """Config file, then environment variables, then flags (flags win)."""
    path = args.config or _env("CONFIG")
    raw = read_raw(path) if path else {}
    cfg = parse_config(raw, str(path) if path else "<defaults>")
    overrides, problems = env_overrides(os.environ)
    if problems:
        raise ConfigError(problems)
    if overrides:
        cfg = parse_config(merge_raw(raw, overrides), "<environment>")
    listen = args.listen or _env("LISTEN")
    if listen:
        cfg = dataclasses.replace(cfg, listen=_parse_listen(listen, cfg.listen))
    upstream = args.upstream or _env("UPSTREAM")
    if upstream:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError([f"--upstream: must be an http:// or https:// URL, got {upstream!r}"])
        cfg = dataclasses.replace(cfg, upstream=dataclasses.replace(cfg.upstream, url=upstream))
    model_changes = {
        k: v
        for k, v in (
            ("name", args.model or _env("MODEL")),
            ("backend", args.backend or _env("BACKEND")),
            ("device", args.device or _env("DEVICE")),
        )
        if v
    }
    if model_changes:
        raw = dataclasses.asdict(cfg.model) | model_changes
        cfg = dataclasses.replace(cfg, model=parse_config({"model": raw}, "<flags>").model)
    workers = getattr(args, "workers", None)
    if workers is not None:
        raw_listen = dataclasses.asdict(cfg.listen) | {"workers": workers}
        cfg = dataclasses.replace(
            cfg, listen=parse_config({"listen": raw_listen}, "<flags>").listen
        )
    level = args.log_level or _env("LOG_LEVEL")
    fmt = args.log_format or _env("LOG_FORMAT")
    if level or fmt:
        raw = {"log_level": (level or cfg.log_level).upper(), "log_format": fmt or cfg.log_format}
        checked = parse_config(raw, "<flags>")
        cfg = dataclasses.replace(cfg, log_level=checked.log_level, log_format=checked.log_format)
    return cfg


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (about 20% less CPU per proxied request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def probe(cfg: Config) -> int:
    """Liveness of the proxy this config describes (a container health check): 0 when
    `/_rerank_proxy/health` answers 200 on its listener, HTTP or HTTPS; else 1, one line."""
    import ssl
    import urllib.request

    host = cfg.listen.host if cfg.listen.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if cfg.listen.tls_cert else "http"
    url = f"{scheme}://{host}:{cfg.listen.port}/_rerank_proxy/health"
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # its own listener, by address
    try:
        with urllib.request.urlopen(url, timeout=4, context=ctx) as resp:
            ok = resp.status == 200
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rerank-proxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rerank-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the proxy"),
        ("probe", "ask a running proxy (this config's listener) for /_rerank_proxy/health"),
        ("model-server", "serve the model behind the Cohere/Jina and TEI rerank APIs"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", help="YAML config file [RERANK_PROXY_CONFIG]")
        cmd.add_argument("--listen", help="HOST:PORT to listen on [RERANK_PROXY_LISTEN]")
        cmd.add_argument("--upstream", help="cluster URL [RERANK_PROXY_UPSTREAM]")
        cmd.add_argument("--model", help="hub id or directory [RERANK_PROXY_MODEL]")
        cmd.add_argument("--backend", help="inference backend [RERANK_PROXY_BACKEND]")
        cmd.add_argument("--device", help="auto, cpu or cuda [RERANK_PROXY_DEVICE]")
        cmd.add_argument("--log-level", help="DEBUG, INFO, ... [RERANK_PROXY_LOG_LEVEL]")
        cmd.add_argument("--log-format", help="text or json [RERANK_PROXY_LOG_FORMAT]")
        if name == "serve":
            cmd.add_argument(
                "--workers", type=int, help="worker processes on one port [listen.workers]"
            )
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")
    sub.add_parser("config-table", help="print the configuration reference (Markdown)")
    from .evaluate.cli import add_parser as add_eval_parser  # argparse only; heavy imports lazy

    add_eval_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "eval":
        from .evaluate.cli import run as run_eval

        return run_eval(args)

    if args.command == "config-table":
        print(config_table())
        return 0
    try:
        if args.command == "check-config":
            checked = load_config(args.file)
            found = preflight(checked, bind=False)
            for line in found:
                print(f"{args.file}: {line}", file=sys.stderr)
            if found:
                return 2
            print(f"{args.file}: ok")
            return 0
        cfg = build_config(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    if args.command == "probe":
        return probe(cfg)
    # Before the model loads: files, addresses, the port, the device, the model directory.
    found = preflight(cfg, bind=True)
    for line in found:
        print(line, file=sys.stderr)
    if found:
        return 2
    from .errors import ModelLoadError
    from .log import setup_logging

    setup_logging(cfg.log_level, cfg.log_format)
    if args.command == "serve" and cfg.listen.workers > 1:
        from .workers import Supervisor

        return Supervisor(cfg, lambda: build_config(args)).run()
    from .serve import serve as run_proxy

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(
                run_proxy(
                    cfg,
                    lambda: build_config(args),
                    model_server=args.command == "model-server",
                )
            )
    except ModelLoadError as exc:
        logger.error("%s", exc)
        return 1
    except ConfigError as exc:  # found while building the app (e.g. compare.qrels)
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
