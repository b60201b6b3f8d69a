"""`pfp models`: list model versions, or activate one (a rollback)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.cli import common


def _f1(metrics: dict[str, Any], split: str) -> str:
    value = (metrics.get(split) or {}).get("macro_f1")
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def cmd_models_list(args: argparse.Namespace) -> None:
    with common.connect(args) as client:
        models = client.get("/models")
    if args.json:
        print(json.dumps(models, indent=2))
        return
    if not models:
        print("No model versions yet: the first one is published by `pfp serve` or `bootstrap`.")
        return
    rows = [
        [
            f"{'*' if m['active'] else ' '} v{m['version']}",
            m["state"],
            m["decision"],
            _f1(m["metrics"], "dev"),
            _f1(m["metrics"], "test"),
            f"v{m['parent_version']}" if m["parent_version"] else "-",
            common.when(m["created_at"]),
        ]
        for m in models
    ]
    print(
        common.table(
            ["VERSION", "STATE", "DECISION", "DEV F1", "TEST F1", "PARENT", "CREATED"], rows
        )
    )
    print("(* active)")


def cmd_models_activate(args: argparse.Namespace) -> None:
    with common.connect(args) as client:
        model = client.post(f"/models/{args.version}/activate")
    print(f"v{model['version']} is active; API processes swap to it within seconds.")


def add_commands(sub: Any, connection: argparse.ArgumentParser) -> None:
    """Add `models` to `pfp`'s subcommands."""
    conn = [connection]

    models = sub.add_parser(
        "models",
        help="list model versions, or activate one (rollback)",
        description="Model versions: list them, or activate one.",
        epilog="examples:\n  pfp models list\n  pfp models activate 1\n",
        formatter_class=common.Formatter,
    )
    models_sub = models.add_subparsers(dest="models_command", required=True)
    p = common.leaf(
        models_sub,
        "list",
        cmd_models_list,
        "every version, newest first, with its dev and test macro-F1",
        "example:\n  pfp models list --json | jq '.[0].metrics'\n",
        conn,
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p = common.leaf(
        models_sub,
        "activate",
        cmd_models_activate,
        "serve this version (a rollback, or a candidate chosen by hand)",
        "Every API process swaps to it without a restart.\n\nexample:\n  pfp models activate 1\n",
        conn,
    )
    p.add_argument("version", type=int, help="the version number, as in `models list`")
