"""How fresh each feature view is online: the newest `_ts:<view>` among a bounded sample of Feast's row hashes."""

from __future__ import annotations

from typing import Any

from pipelines.online_layout import decode_ts

TS_PREFIX = b"_ts:"


def newest_rows(client: Any, project: str, sample: int = 5000) -> dict[str, float]:
    """View name -> the newest row's event time (epoch seconds) among up to `sample` keys of the project.

    Feast's keys end with the project name; a SCAN with that pattern visits them without blocking Redis. The sample
    bounds the cost on a large store: the answer is then a lower bound of the freshness of the whole view."""
    newest: dict[str, float] = {}
    for seen, key in enumerate(client.scan_iter(match=f"*{project}", count=1000, _type="hash"), start=1):
        fields = client.hgetall(key)
        for field, raw in fields.items():
            if isinstance(field, bytes) and field.startswith(TS_PREFIX):
                stamp = decode_ts(raw)
                view = field[len(TS_PREFIX) :].decode()
                if stamp is not None and stamp > newest.get(view, 0.0):
                    newest[view] = stamp
        if seen >= sample:
            break
    return newest
