"""The console's files ship in the package and name no other host (it must work with no internet access)."""

from __future__ import annotations

import re

from inference_api.console import ASSETS, FILES

SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def test_every_file_the_page_names_is_in_the_package() -> None:
    page = (ASSETS / "index.html").read_text()
    for name in FILES:
        assert (ASSETS / name).is_file()
    assert set(re.findall(r'(?:src|href)="/console/([^"]+)"', page)) == set(FILES) - {"index.html"}


def test_no_file_refers_to_another_host() -> None:
    for name in FILES:
        text = (ASSETS / name).read_text().replace(SVG_NAMESPACE, "")
        assert re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}", text) == [], name
        assert "@import" not in text and "url(" not in text, name
