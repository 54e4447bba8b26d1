"""Unpacking a model package sent over HTTP: a good archive becomes the package folder; each bad one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_api.domain.package_upload import PackageRefused, unpack
from tests.model_packages import make_package
from tests.package_archives import bad_archives, good_archive

LIMIT = 200_000


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return make_package(tmp_path / "pkg", [("amount", "float64"), ("card_txn_count_1h", "int64")])


@pytest.mark.parametrize("top", [None, "pkg"])
def test_a_good_archive_unpacks_to_the_package_folder(package: Path, tmp_path: Path, top: str | None) -> None:
    target = tmp_path / "out"
    target.mkdir()
    folder = unpack(good_archive(package, top), target, LIMIT)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in package.iterdir())
    for path in package.iterdir():
        assert (folder / path.name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "device", "absolute", "dotdot", "bomb", "not gzip", "empty"])
def test_each_bad_archive_is_refused_and_writes_nothing(package: Path, tmp_path: Path, kind: str) -> None:
    body, words = bad_archives(package, LIMIT)[kind]
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(PackageRefused) as refused:
        unpack(body, target, LIMIT)
    assert words in refused.value.message
    assert refused.value.code == "invalid_request" and refused.value.status == 422
    assert list(target.iterdir()) == []
    assert not Path("/tmp/fraudserve-evil").exists() and not (tmp_path.parent / "evil").exists()
