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

from dataclasses import dataclass

from .config import Config, Rules

#: top-level keys that take effect only at start-up
STATIC_KEYS = ("listen", "upstream", "model", "log_format")


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

        The static part is never half-applied: it stays as it was, whatever `cfg` says.
        """
        self._current = Snapshot.of(cfg)
        return [k for k in STATIC_KEYS if getattr(cfg, k) != getattr(self.static, k)]
