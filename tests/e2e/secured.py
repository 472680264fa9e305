"""The secured OpenSearch of `scripts/secured-engine`, and the users, roles and corpus put in it.

Plain helpers, no fixtures: `ensure_cluster` starts the cluster unless it runs (returning
whether it did), `setup_security` creates the test users and roles through the security
plugin's REST API as admin, `index_corpus` (re)creates the small corpus. `visible` says which
documents and fields a user may see, computed from the corpus, not from the engine.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import requests

from tests.conftest import CACHE, REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "secured-engine"
STATE = CACHE / "engines" / "opensearch-secured"
INDEX = "secured-docs"
HIDDEN_FROM_BOB = ("text", "secret")
USER_PREFIX = "rp-test-"

TOPICS = ("solar panels", "wind turbines", "battery storage", "grid balancing", "heat pumps")
OWNERS = ("alice", "bob", "public")


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.name, self.password)

    @property
    def token(self) -> str:
        """The base64 part of the Basic Authorization header."""
        return base64.b64encode(f"{self.name}:{self.password}".encode()).decode()

    @property
    def header(self) -> dict[str, str]:
        return {"Authorization": f"Basic {self.token}"}


@dataclass(frozen=True, slots=True)
class Cluster:
    url: str
    ca: str
    admin: User
    alice: User  # DLS: owner alice or public
    bob: User  # DLS: owner bob or public; FLS: text and secret excluded
    carol: User  # may log in, has no index permission
    dave: User  # like carol; for counting failed logins
    erin: User  # like carol; the control for dave
    allowed_tries: int  # failed logins after which the cluster blocks a user name

    @property
    def users(self) -> tuple[User, ...]:
        return (self.admin, self.alice, self.bob, self.carol, self.dave, self.erin)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_tools() -> list[str]:
    """What `scripts/secured-engine` needs and this machine lacks."""
    home = os.environ.get("JAVA_HOME")
    java = os.environ.get("JAVA") or (os.path.join(home, "bin", "java") if home else None)
    have_java = bool(java and os.path.exists(java)) or shutil.which("java") is not None
    return [
        name
        for name, ok in (
            ("java", have_java),
            ("mvn", shutil.which(os.environ.get("MVN", "mvn")) is not None),
            ("openssl", shutil.which("openssl") is not None),
        )
        if not ok
    ]


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ensure_cluster() -> tuple[str, str, bool]:
    """(URL, CA file, started_by_us); RuntimeError with the script's output if it cannot start."""
    proc = _run("url", timeout=60)
    started = False
    if proc.returncode != 0:
        # scripts/secured-engine has its own health timeout (ENGINE_START_TIMEOUT); the outer
        # limit only guards against a hung Maven resolve.
        proc = _run("start", timeout=1800)
        started = True
    lines = proc.stdout.split()
    if proc.returncode != 0 or len(lines) != 2:
        raise RuntimeError(
            f"scripts/secured-engine start failed (exit {proc.returncode}):\n{proc.stderr.strip()}"
        )
    return lines[0], lines[1], started


def stop_cluster() -> None:
    proc = _run("stop", timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/secured-engine stop failed:\n{proc.stderr.strip()}")


def session(ca: str | None = None) -> requests.Session:
    """A requests session that ignores proxy settings from the environment."""
    s = requests.Session()
    s.trust_env = False
    if ca:
        s.verify = ca
    return s


def _password() -> str:
    # Random per run (never a string that could be in a log by chance), and strong enough for
    # the plugin's password rules (length, character classes, zxcvbn "strong").
    return f"Pw-{secrets.token_urlsafe(15)}-9z"


def _api(s: requests.Session, url: str, admin: User, path: str, body: Any) -> None:
    resp = s.put(f"{url}/_plugins/_security/api/{path}", json=body, auth=admin.auth, timeout=30)
    if resp.status_code not in (200, 201):
        raise RuntimeError(f"PUT {path}: {resp.status_code} {resp.text}")


def _login_name(role: str, run: str) -> str:
    # New user names on every run: the cluster counts failed logins per user name (and blocks
    # one for a minute after `allowed_tries`), and the 401 tests make some on purpose.
    return f"{USER_PREFIX}{role}-{run}"


def setup_security(url: str, ca: str) -> Cluster:
    """Users, roles and role mappings for the tests, made as admin (older test users removed)."""
    admin = User("admin", (STATE / "admin-password").read_text().strip())
    run = secrets.token_hex(3)
    users = {
        r: User(_login_name(r, run), _password()) for r in ("alice", "bob", "carol", "dave", "erin")
    }
    roles = {
        "rp_test_alice": {
            "cluster_permissions": ["cluster_composite_ops_ro"],
            "index_permissions": [
                {
                    "index_patterns": [INDEX],
                    "dls": '{"terms": {"owner": ["alice", "public"]}}',
                    "allowed_actions": ["read"],
                }
            ],
        },
        "rp_test_bob": {
            "cluster_permissions": ["cluster_composite_ops_ro"],
            "index_permissions": [
                {
                    "index_patterns": [INDEX],
                    "dls": '{"terms": {"owner": ["bob", "public"]}}',
                    "fls": [f"~{f}" for f in HIDDEN_FROM_BOB],
                    "allowed_actions": ["read"],
                }
            ],
        },
        "rp_test_carol": {"cluster_permissions": ["cluster_composite_ops_ro"]},
    }
    mapped = {
        "rp_test_alice": [users["alice"].name],
        "rp_test_bob": [users["bob"].name],
        "rp_test_carol": [users[r].name for r in ("carol", "dave", "erin")],
    }
    with session(ca) as s:
        api = f"{url}/_plugins/_security/api"
        old = s.get(f"{api}/internalusers", auth=admin.auth, timeout=30)
        old.raise_for_status()
        for name in old.json():
            if name.startswith(USER_PREFIX):
                s.delete(f"{api}/internalusers/{name}", auth=admin.auth, timeout=30)
        for user in users.values():
            _api(s, url, admin, f"internalusers/{user.name}", {"password": user.password})
        for role, body in roles.items():
            _api(s, url, admin, f"roles/{role}", body)
            _api(s, url, admin, f"rolesmapping/{role}", {"users": mapped[role]})
        conf = s.get(f"{api}/securityconfig", auth=admin.auth, timeout=30)
        conf.raise_for_status()
        listeners = conf.json()["config"]["dynamic"].get("auth_failure_listeners", {})
        tries = [v["allowed_tries"] for v in listeners.values() if v.get("type") == "username"]
    return Cluster(url, ca, admin, **users, allowed_tries=min(tries, default=0))


def corpus() -> dict[str, dict[str, Any]]:
    """Fifteen documents, five per owner; every title matches the test queries."""
    docs: dict[str, dict[str, Any]] = {}
    k = 0
    for owner in OWNERS:
        for i, topic in enumerate(TOPICS):
            k += 1
            docs[f"{owner}-{i}"] = {
                "title": f"{topic.capitalize()} and energy storage, notes #{k:02d}",
                "text": f"TEXTMARK-{k:02d} field study of {topic} feeding a home energy store.",
                "secret": f"CANARY-{k:02d} confidential {topic} contract price and storage plans.",
                "owner": owner,
                "n": k,
            }
    return docs


def index_corpus(c: Cluster) -> dict[str, dict[str, Any]]:
    docs = corpus()
    with session(c.ca) as s:
        s.delete(f"{c.url}/{INDEX}", auth=c.admin.auth, timeout=30)
        resp = s.put(
            f"{c.url}/{INDEX}",
            auth=c.admin.auth,
            timeout=60,
            json={
                "settings": {"number_of_shards": 1, "number_of_replicas": 0},
                "mappings": {
                    "properties": {
                        "title": {"type": "text"},
                        "text": {"type": "text"},
                        "secret": {"type": "text"},
                        "owner": {"type": "keyword"},
                        "n": {"type": "integer"},
                    }
                },
            },
        )
        resp.raise_for_status()
        lines = []
        for doc_id, doc in docs.items():
            lines.append(f'{{"index": {{"_index": "{INDEX}", "_id": "{doc_id}"}}}}')
            lines.append(json.dumps(doc))
        resp = s.post(
            f"{c.url}/_bulk?refresh=true",
            data="\n".join(lines) + "\n",
            headers={"Content-Type": "application/x-ndjson"},
            auth=c.admin.auth,
            timeout=60,
        )
        resp.raise_for_status()
        assert not resp.json()["errors"], resp.text
    return docs


def visible(user: str, docs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The documents (id -> the fields) the user of role `user` (alice, bob, admin, ...) may see."""
    if user == "admin":
        return dict(docs)
    if user not in ("alice", "bob"):
        return {}
    out = {}
    for doc_id, doc in docs.items():
        if doc["owner"] in (user, "public"):
            hidden = HIDDEN_FROM_BOB if user == "bob" else ()
            out[doc_id] = {k: v for k, v in doc.items() if k not in hidden}
    return out
