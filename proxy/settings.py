"""Configuration held for a running proxy: static settings and a swappable snapshot. Pure.

A `Config` mixes two kinds of settings. Static ones (`listen`, `upstream`, `model`,
`log_format`) shape objects built once at start-up — the listening socket, the upstream
session, the loaded model — and change only with a restart. Reloadable ones (the index
rules, `log_level`, `access_log`) are gathered in a frozen `Snapshot`. A request reads
`Settings.current` once, at its start, and passes that snapshot down, so a reload that swaps
it never mixes two configs in one answer. `Settings.replace` is the only way to change it:
it swaps the snapshot atomically and reports which static keys differ (those need a restart
and are not applied).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import Config, Rules

#: top-level keys that take effect only at start-up (`listen` in part: see `restart_keys`)
STATIC_KEYS = (
    "listen",
    "upstream",
    "model",
    "log_format",
    "cache",
    "model_server",
    "shadow",
    "compare",
)


def restart_keys(old: Config, new: Config) -> list[str]:
    """The static settings `new` changes, which need a restart to take effect.

    Of `listen`, the address, turning TLS on or off and the client CA's presence need a new
    listener; new certificate files and `drain_delay` do not.
    """
    out = []
    a, b = old.listen, new.listen
    for key in (
        "host",
        "port",
        "workers",
        "header_timeout",
        "body_timeout",
        "keepalive_timeout",
        "max_connections",
    ):
        if getattr(a, key) != getattr(b, key):
            out.append(f"listen.{key}")
    if bool(a.tls_cert) != bool(b.tls_cert) or bool(a.client_ca) != bool(b.client_ca):
        out.append(
            "listen.tls_cert" if bool(a.tls_cert) != bool(b.tls_cert) else "listen.client_ca"
        )
    out += [k for k in STATIC_KEYS[1:] if getattr(old, k) != getattr(new, k)]
    return out


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The settings one request runs with."""

    rules: Rules
    log_level: str
    access_log: bool

    @classmethod
    def of(cls, cfg: Config) -> Snapshot:
        return cls(rules=cfg.rules, log_level=cfg.log_level, access_log=cfg.access_log)


class Settings:
    """The static config the app was built with, and the current reloadable snapshot."""

    def __init__(self, cfg: Config) -> None:
        self.static = cfg
        self._current = Snapshot.of(cfg)

    @property
    def current(self) -> Snapshot:
        return self._current

    def replace(self, cfg: Config) -> list[str]:
        """Take `cfg`'s reloadable settings; return the static keys that would need a restart.

        The static part is never half-applied: it stays as it was, whatever `cfg` says, except
        the listener's certificate files and drain delay (the caller re-reads the files).
        """
        needs_restart = restart_keys(self.static, cfg)
        self._current = Snapshot.of(cfg)
        listen = dataclasses.replace(
            self.static.listen,
            tls_cert=cfg.listen.tls_cert if self.static.listen.tls_cert else None,
            tls_key=cfg.listen.tls_key if self.static.listen.tls_cert else None,
            client_ca=cfg.listen.client_ca if self.static.listen.client_ca else None,
            drain_delay=cfg.listen.drain_delay,
        )
        self.static = dataclasses.replace(self.static, listen=listen)
        return needs_restart
