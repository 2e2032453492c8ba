"""``artifactfs config``: every setting's effective value and where it came from; and the
settings every command is run with (settings.py declares them)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import UserError
from ..home import HOME_ENV, default_home
from ..settings import NONE, NOT_IN_THE_FILE, SETTINGS, Settings, file_path, flags_of, resolve


def add_parser(commands: Any) -> None:
    config = commands.add_parser(
        "config",
        help="show each setting's effective value and where it came from",
        description="Show each setting's effective value and where it came from: a flag, its "
        "ARTIFACTFS_... variable, the settings file $ARTIFACTFS_HOME/config.toml, or the "
        "default (that order of precedence). Exit status 2 if the file or a variable holds a "
        "bad value or an unknown key.",
    )
    config.add_argument("--json", action="store_true", help="print one JSON object")
    config.set_defaults(run=config_command)


def effective(args: argparse.Namespace) -> Settings:
    """The settings ``args`` (one command's) run with. Raises ``UserError`` for a bad one."""
    try:
        return resolve(default_home(), flags_of(args.command, args))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def config_command(args: argparse.Namespace) -> int:
    from ..cas.eviction import default_max_size, format_size

    settings: Settings = args.settings
    home = default_home()
    path = file_path(home)
    rows: list[dict[str, Any]] = [
        {
            "key": "home",
            "value": str(home),
            "source": f"variable {HOME_ENV}" if _home_from_variable() else "default",
            "variable": HOME_ENV,
            "flag": None,
            "note": f"where the settings file is: {NOT_IN_THE_FILE} cannot come from it",
            "help": "the state home",
        }
    ]
    for setting in SETTINGS:
        value = settings[setting.key]
        note = ""
        if value is None and setting.key == "cache.max_size":
            value = default_max_size(home)
            note = setting.default_note
        if setting.key == "cache.max_size":
            note = f"{format_size(value)}" + (f"; {note}" if note else "")
        rows.append(
            {
                "key": setting.key,
                "value": value,
                "source": settings.source(setting.key),
                "variable": setting.variable,
                "flag": setting.flag.name if setting.flag else None,
                "note": note,
                "help": setting.help,
            }
        )
    if args.json:
        report = {"file": str(path), "file_exists": path.is_file(), "settings": rows}
        print(json.dumps(report, indent=2))
        return 0
    print(f"# settings file: {path}" + ("" if path.is_file() else " (there is none)"))
    width = max(len(row["key"]) for row in rows)
    shown = [_shown(row["value"]) for row in rows]
    value_width = max(len(text) for text in shown)
    for row, text in zip(rows, shown, strict=True):
        line = f"{row['key']:<{width}}  {text:<{value_width}}  {row['source']}"
        if row["note"]:
            line += f"  ({row['note']})"
        print(line)
    return 0


def _home_from_variable() -> bool:
    import os

    return bool(os.environ.get(HOME_ENV))


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value == "":
        return NONE
    return str(value)
