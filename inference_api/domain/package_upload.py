"""A model package sent over HTTP as a `.tar.gz`, unpacked safely before the registry's own checks run.

The archive is read member by member and refused, naming the member, at the first thing a package never holds: a
link (symbolic or hard), a device file or FIFO, an absolute path or one that climbs out with `..`, more members than
`MAX_MEMBERS`, or contents that expand past the size limit (counted from the members' headers before anything is
written, so a small archive that would inflate to gigabytes costs nothing). Files are written by this module, never
by `tarfile`'s extraction, with plain permissions, into a fresh folder that the caller removes.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from core.errors import InvalidInput
from core.models.manifest import MANIFEST_FILE

MAX_MEMBERS = 1_000


class PackageRefused(InvalidInput):
    """An archive that is not a plain model package; `details` names the member and the rule."""

    def __init__(self, message: str, member: str | None = None, rule: str = "archive") -> None:
        super().__init__(message, {"field": "body", "member": member, "rule": rule})


def _safe_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\") or PureWindowsPath(name).drive:
        raise PackageRefused(f"{name!r}: an absolute path; a package holds relative paths only", name, "path")
    if any(part == ".." for part in path.parts):
        raise PackageRefused(f"{name!r}: a path outside the package ('..')", name, "path")
    return PurePosixPath(*[part for part in path.parts if part not in ("", ".")])


def unpack(body: bytes, target: Path, limit_bytes: int) -> Path:
    """Unpack a `.tar.gz` package into `target` (an empty folder) and return the folder holding its manifest: the
    archive's root, or its single top-level folder (`tar czf pkg.tar.gz pkg/`)."""
    if not body:
        raise PackageRefused("the request body is empty: send the package as a .tar.gz (tar czf - -C PACKAGE .)")
    files: list[tuple[PurePosixPath, bytes]] = []
    expanded = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
            for count, member in enumerate(archive, start=1):
                if count > MAX_MEMBERS:
                    raise PackageRefused(f"more than {MAX_MEMBERS} members: not a model package", None, "members")
                if member.issym() or member.islnk():
                    raise PackageRefused(f"{member.name!r}: links are not allowed in a package", member.name, "link")
                if member.isdev() or member.isfifo() or not (member.isfile() or member.isdir()):
                    raise PackageRefused(
                        f"{member.name!r}: device files and other special files are not allowed", member.name, "device"
                    )
                path = _safe_path(member.name)
                if member.isdir() or not path.parts:
                    continue
                expanded += member.size
                if expanded > limit_bytes:
                    raise PackageRefused(
                        f"the package expands past {limit_bytes:,} bytes (FRAUDSERVE_MAX_PACKAGE_BYTES)",
                        member.name,
                        "size",
                    )
                handle = archive.extractfile(member)
                if handle is None:
                    raise PackageRefused(f"{member.name!r}: unreadable member", member.name, "archive")
                files.append((path, handle.read()))
    except (tarfile.TarError, zlib.error, EOFError, OSError, ValueError) as exc:
        raise PackageRefused(f"not a readable .tar.gz archive ({exc}); send `tar czf - -C PACKAGE .`") from exc
    if not files:
        raise PackageRefused("the archive holds no files: send the package folder (manifest.json and the model file)")
    for path, content in files:
        destination = target.joinpath(*path.parts)
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(content)
        except (OSError, ValueError) as exc:  # a name this file system cannot hold, a file where a folder goes
            raise PackageRefused(f"{str(path)!r}: cannot be unpacked ({exc})", str(path), "path") from exc
        destination.chmod(0o644)
    roots = {path.parts[0] for path, _ in files}
    if (target / MANIFEST_FILE).is_file() or len(roots) != 1 or not (target / next(iter(roots))).is_dir():
        return target
    return target / next(iter(roots))
