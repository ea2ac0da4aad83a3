"""``procmem keys create|ls|revoke``: API keys of ``procmem serve`` (only their hashes are stored)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from procmem.cli.app import app
from procmem.cli.common import home_of, out_console, print_json_line

__all__: list[str] = []

keys_app = typer.Typer(help="API keys of `procmem serve`: create (shown once), list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="A label for the key.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: chat, feedback, admin.")] = "chat,feedback",
    tenant: Annotated[str, typer.Option(help="Whose memory and episodes the key reads and writes.")] = "default",
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as one JSON line.")] = False,
) -> None:
    """Create a key and print it once (store it now: only its hash is kept)."""
    from procmem.serve import KeyStore, keys_path
    from procmem.serve.wiring import check_tenant

    store = KeyStore(keys_path(home_of(ctx)))
    record, secret = store.create(name, [s.strip() for s in scopes.split(",") if s.strip()], check_tenant(tenant))
    if json_out:
        print_json_line({"key": secret, **record.model_dump(mode="json", exclude={"hash"})})
        return
    out_console.print(f"key {record.id} ({record.name}, tenant {record.tenant}, scopes {','.join(record.scopes)}):",
                      highlight=False, markup=False)
    print(secret, flush=True)
    out_console.print("store it now: it is not shown again.", highlight=False)


@keys_app.command("ls")
def ls(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print the keys as one JSON line.")] = False,
) -> None:
    """List keys (never the keys themselves)."""
    from procmem.serve import KeyStore, keys_path

    keys = KeyStore(keys_path(home_of(ctx))).keys()
    if json_out:
        print_json_line([k.model_dump(mode="json", exclude={"hash"}) for k in keys])
        return
    table = Table("id", "name", "tenant", "scopes", "created", "revoked")
    for key in keys:
        table.add_row(key.id, key.name, key.tenant, ",".join(key.scopes), key.created_at, key.revoked_at or "")
    out_console.print(table)


@keys_app.command("revoke")
def revoke(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key's name or id.")],
) -> None:
    """Revoke a key: a running server refuses it from its next request."""
    from procmem.serve import KeyStore, keys_path

    record = KeyStore(keys_path(home_of(ctx))).revoke(key)
    out_console.print(f"revoked {record.id} ({record.name})", highlight=False, markup=False)
