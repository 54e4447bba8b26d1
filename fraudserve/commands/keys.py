"""`fraudserve keys`: API keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from fraudserve.commands.common import console, fail, load_settings, out

app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")


# ----------------------------------------------------------------------------------------------------------- keys
@app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: score, predict, admin.")] = "score",
) -> None:
    """Create an API key; it is printed once, only its hash is stored."""
    from core.keys import KeyStore, Scope

    try:
        chosen = [Scope(s.strip()) for s in scopes.split(",") if s.strip()]
    except ValueError as exc:
        raise fail(ValueError(f"--scopes {scopes!r}: use score, predict and/or admin")) from exc
    if not chosen:
        raise fail(ValueError("--scopes is empty: use score, predict and/or admin"))
    record, key = KeyStore(load_settings().keys_file).create(name, chosen)
    console.print(f"key {record.id} ({record.name}, scopes {', '.join(record.scopes)}); store it now, it is not kept:")
    out.print(key, highlight=False)


@app.command("list")
def keys_list() -> None:
    """Key ids, names and scopes (never the secrets)."""
    from core.keys import KeyStore

    table = Table(title="API keys")
    for column in ("id", "name", "scopes", "created"):
        table.add_column(column)
    for record in KeyStore(load_settings().keys_file).records().values():
        table.add_row(record.id, record.name, ", ".join(record.scopes), record.created_at)
    out.print(table)


@app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id."""
    from core.keys import KeyStore

    if not KeyStore(load_settings().keys_file).revoke(key_id):
        raise fail(ValueError(f"no key with id {key_id!r} (see `fraudserve keys list`)"))
    out.print(f"revoked {key_id}")
