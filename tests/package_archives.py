"""Model package archives for registration over HTTP: a good one from a package folder, and each kind of bad one."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def good_archive(folder: Path, top: str | None = None) -> bytes:
    """The package folder as `tar czf - -C folder .` makes it (or under one top-level folder `top`)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for path in sorted(folder.iterdir()):
            archive.add(path, arcname=f"{top}/{path.name}" if top else path.name)
    return out.getvalue()


def _archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for info, content in members:
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    return out.getvalue()


def _file(name: str, content: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def bad_archives(folder: Path, limit_bytes: int) -> dict[str, tuple[bytes, str]]:
    """Archives the registry must refuse: name -> (body, words the refusal must contain)."""
    manifest = (folder / "manifest.json").read_bytes()
    head = _file("manifest.json", manifest)
    return {
        "symlink": (_archive(head, _special("model.txt", tarfile.SYMTYPE, "/etc/passwd")),
                    "links are not allowed"),
        "hardlink": (_archive(head, _special("model.txt", tarfile.LNKTYPE, "manifest.json")),
                     "links are not allowed"),
        "device": (_archive(head, _special("model.txt", tarfile.CHRTYPE)),
                   "device files"),
        "absolute": (_archive(_file("/tmp/fraudserve-evil/manifest.json", manifest)), "absolute path"),
        "dotdot": (_archive(_file("../../evil/manifest.json", manifest)), "outside the package"),
        "bomb": (_archive(head, _file("model.txt", bytes(limit_bytes + 1))),
                 "expands past"),
        "not gzip": (b"this is not an archive", "not a readable .tar.gz"),
        "empty": (_archive(), "holds no files"),
    }  # fmt: skip
