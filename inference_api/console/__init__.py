"""The operator console (`GET /console`): one page of plain HTML, CSS and JavaScript shipped in this package (no
CDN, no build step; charts are SVG drawn by console.js), reading the admin JSON routes of routes/console.py and
routes/admin.py with the `admin` key the operator types once (kept in the tab's session storage)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent
# The files the page is made of, by URL name, with their media types: nothing else under this folder is served.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
