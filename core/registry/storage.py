"""Where registered versions live: a small interface, and the local-folder implementation.

An object store can implement the same four operations: versions are written once under a number that only one
writer can claim (here: an atomic directory rename; on S3 or GCS: a conditional put), and the alias document is
replaced with compare-and-swap (here: under a file lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

AliasDoc = dict[str, Any]  # {"aliases": {"production": 1}, "history": [{"alias", "from", "to", "at"}]}


class Storage(Protocol):
    def names(self) -> list[str]: ...

    def versions(self, name: str) -> list[int]: ...

    def read(self, name: str, version: int, file: str) -> bytes: ...

    def put_version(self, name: str, files: dict[str, bytes]) -> int:
        """Store a new version atomically under the next free number, and return that number."""
        ...

    def aliases(self, name: str) -> AliasDoc: ...

    def update_aliases(self, name: str, change: Callable[[AliasDoc], AliasDoc]) -> AliasDoc:
        """Apply `change` to the alias document with no other writer in between; return the new document."""
        ...


class LocalStorage:
    """`root/<name>/versions/<n>/<files>` and `root/<name>/aliases.json`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir())

    def versions(self, name: str) -> list[int]:
        folder = self.root / name / "versions"
        if not folder.exists():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())

    def read(self, name: str, version: int, file: str) -> bytes:
        return (self.root / name / "versions" / str(version) / file).read_bytes()

    def path(self, name: str, version: int) -> Path:
        return self.root / name / "versions" / str(version)

    def put_version(self, name: str, files: dict[str, bytes]) -> int:
        versions = self.root / name / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=versions))
        try:
            for file, content in files.items():
                (staging / file).write_bytes(content)
                with (staging / file).open("rb") as handle:
                    os.fsync(handle.fileno())
            number = max(self.versions(name), default=0) + 1
            while True:
                try:
                    # rename() of a directory onto an existing non-empty one fails: only one writer gets `number`.
                    staging.rename(versions / str(number))
                    return number
                except OSError:
                    if not (versions / str(number)).exists():
                        raise
                    number += 1
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def aliases(self, name: str) -> AliasDoc:
        path = self.root / name / "aliases.json"
        if not path.exists():
            return {"aliases": {}, "history": []}
        doc: AliasDoc = json.loads(path.read_text())
        return doc

    def update_aliases(self, name: str, change: Callable[[AliasDoc], AliasDoc]) -> AliasDoc:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder / ".aliases.lock"):
            doc = change(self.aliases(name))
            fd, tmp = tempfile.mkstemp(prefix=".aliases-", dir=folder)
            with os.fdopen(fd, "w") as handle:
                json.dump(doc, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, folder / "aliases.json")
            return doc


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
