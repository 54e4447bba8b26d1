"""API keys: random secrets shown once, stored only as SHA-256 hashes with their scopes under FRAUDSERVE_HOME.

A key reads `fs_<id>_<secret>`; the id finds the record, the secret is compared in constant time. Keys are 256-bit
random, so a plain SHA-256 (no slow KDF) is enough to make the stored file useless to a reader.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from core.errors import Forbidden, Unauthorized


class Scope(StrEnum):
    score = "score"
    predict = "predict"
    admin = "admin"


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    scopes: list[str]
    sha256: str
    created_at: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._name = os.fspath(path)  # os.stat of a str: half the cost of Path.stat, on every scored request
        self._cache: tuple[int, dict[str, KeyRecord]] | None = None

    def records(self) -> dict[str, KeyRecord]:
        """The stored keys by id (re-read only when the file changed). The file is looked at on every call, so a key
        created or revoked by `fraudserve keys` (another process) counts from the next request on."""
        try:
            mtime = os.stat(self._name).st_mtime_ns
        except FileNotFoundError:
            return {}
        if self._cache is None or self._cache[0] != mtime:
            raw = json.loads(self.path.read_text())
            self._cache = (mtime, {r["id"]: KeyRecord(**r) for r in raw.get("keys", [])})
        return self._cache[1]

    def any(self) -> bool:
        return bool(self.records())

    def create(self, name: str, scopes: list[Scope]) -> tuple[KeyRecord, str]:
        """A new key; the secret is returned once and never stored."""
        key_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        record = KeyRecord(key_id, name, sorted(s.value for s in scopes), _digest(secret),
                           datetime.now(UTC).isoformat(timespec="seconds"))  # fmt: skip
        with self._locked():
            records = list(self.records().values())
            records.append(record)
            self._write(records)
        return record, f"fs_{key_id}_{secret}"

    def revoke(self, key_id: str) -> bool:
        with self._locked():
            records = self.records()
            if key_id not in records:
                return False
            self._write([r for r in records.values() if r.id != key_id])
            return True

    def authenticate(self, presented: str | None, scope: Scope) -> KeyRecord:
        """The key's record if it is valid and has `scope`; Unauthorized or Forbidden otherwise."""
        if not presented:
            raise Unauthorized(
                "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>` "
                "(create one with `fraudserve keys create`)"
            )
        parts = presented.split("_", 2)
        record = self.records().get(parts[1]) if len(parts) == 3 and parts[0] == "fs" else None
        if record is None or not hmac.compare_digest(record.sha256, _digest(parts[2])):
            raise Unauthorized("the API key is not valid (revoked, mistyped or from another installation)")
        if scope.value not in record.scopes:
            raise Forbidden(
                f"the API key {record.name!r} lacks the {scope.value!r} scope this route needs "
                f"(it has: {', '.join(record.scopes)})",
                {"required_scope": scope.value},
            )
        return record

    def _write(self, records: list[KeyRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=self.path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump({"keys": [asdict(r) for r in records]}, handle, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self._cache = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with (self.path.parent / ".keys.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
