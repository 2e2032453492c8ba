"""The settings: each declared once, here, with where its value may come from.

A setting's value comes from, first to last: its flag on the command line (where it has one),
its ``ARTIFACTFS_…`` variable, the settings file ``$ARTIFACTFS_HOME/config.toml`` (a table per
group: ``[cache] max_size = "20G"``), its default. ``resolve`` returns every value with the
place it came from; ``artifactfs config`` prints them.

- ``$ARTIFACTFS_HOME`` itself is not a setting of the file: it says where the file is.
- Credentials are no settings: tokens stay in the environment or a token file
  (sources/credentials.py), and nothing here is ever written back to the file.
- A bad value, an unknown key (a typo must not be silently ignored), a file that is not TOML:
  ``ValueError`` with one line naming the key and the file (or the flag, or the variable). An
  empty variable counts as unset.
- A process that starts others (the daemon, its workers) hands its effective values down as
  variables (``export``), so that a worker keeps to its daemon's settings even if the file
  changes meanwhile; the file is then not read at all.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

FILE_NAME = "config.toml"

# -- parsers: each takes a value from a flag or a variable (``text``) or from the file ----------

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``10G``, ``500M``, ``64k``, ``1.5GiB``, ``12345`` (bytes) -> bytes. Units are binary
    (K = 1024). Raises ValueError with a line fit for the user."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text[:40]!r} (say e.g. 10G, 500M or a number of bytes)")
    number, unit, suffix = match.groups()
    if suffix and suffix.upper() == "IB" and not unit:
        raise ValueError(f"not a size: {text[:40]!r} (say e.g. 10G, 500M or a number of bytes)")
    value = int(float(number) * _UNITS[unit.upper()])
    if value > 1 << 60:
        raise ValueError(f"size too large: {text[:40]!r}")
    return value


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date or time"


class _WrongType(ValueError):
    def __init__(self, wanted: str, value: object) -> None:
        super().__init__(f"must be {wanted}, not {_type_name(value)}")


def _size(value: object, text: bool) -> int:
    wanted = 'a size such as "10G" or a number of bytes'
    if isinstance(value, str):
        size = parse_size(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        raise _WrongType(wanted, value)
    if size <= 0:
        raise ValueError("the cache needs more than 0 bytes")
    if size > 1 << 60:
        raise ValueError(f"size too large: {size}")
    return size


MAX_IO_TIMEOUT = 86400.0


def _seconds(value: object, text: bool) -> float:
    wanted = "a number of seconds"
    if isinstance(value, str) and text:
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"not a number of seconds: {value[:40]!r}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise _WrongType(wanted, value)
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_IO_TIMEOUT):
        raise ValueError(f"must be more than 0 and at most {MAX_IO_TIMEOUT:.0f} seconds")
    return seconds


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _boolean(value: object, text: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and text:
        word = value.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ValueError(f"not a boolean: {value[:40]!r} (say 1 or 0, true or false)")
    raise _WrongType("true or false", value)


HF_CACHE_AUTO = "auto"
HF_CACHE_OFF = "off"


def _hf_cache(value: object, text: bool) -> str:
    """``auto`` (huggingface_hub's own cache), ``off``, or an absolute directory."""
    if not isinstance(value, str):
        raise _WrongType('"auto", "off" or an absolute directory', value)
    word = value.strip()
    if word.lower() in ("", HF_CACHE_AUTO):
        return HF_CACHE_AUTO
    if word.lower() in ("off", "0", "no", "false", "none"):
        return HF_CACHE_OFF
    path = os.path.expanduser(word)
    if not os.path.isabs(path):
        raise ValueError(f'not an absolute directory: {word[:80]!r} (or say "auto" or "off")')
    return os.path.normpath(path)


NONE = "none"
"""An empty text setting as a variable holds it (an empty variable counts as unset)."""


def _text(check: Callable[[str], str], wanted: str) -> Callable[[object, bool], str]:
    """A string setting checked by ``check`` (which raises ValueError with the reason)."""

    def parse(value: object, text: bool) -> str:
        if not isinstance(value, str):
            raise _WrongType(wanted, value)
        if value.strip().lower() == NONE:
            return ""
        return check(value)

    return parse


# -- the shared tier's address (tier/location.py uses it) --

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX = re.compile(r"[A-Za-z0-9!_.*'()/-]*")


def check_url(text: str) -> str:
    """``tier.url`` checked: ``s3://bucket/prefix``, ``file:///path`` or empty (no tier).
    Raises ValueError with a line for the user."""
    text = text.strip()
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme == "s3":
        if parts.username or parts.password or "@" in parts.netloc:
            raise ValueError("an s3:// tier url holds no credentials (use AWS_* variables)")
        if not _BUCKET.fullmatch(parts.netloc) or ".." in parts.netloc:
            raise ValueError(f"not an S3 bucket name: {parts.netloc[:64]!r}")
        prefix = parts.path.strip("/")
        if not _PREFIX.fullmatch(prefix) or "//" in prefix or parts.query or parts.fragment:
            raise ValueError(f"not an S3 key prefix: {parts.path[:80]!r}")
        return f"s3://{parts.netloc}/{prefix}".rstrip("/")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"a file:// tier url needs an absolute path: {text[:80]!r}")
        return f"file://{os.path.normpath(parts.path)}"
    raise ValueError(f"a tier url is s3://BUCKET/PREFIX or file:///PATH, not {text[:80]!r}")


def check_endpoint(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"an S3 endpoint is http(s)://HOST[:PORT], not {text[:80]!r}")
    if parts.username or parts.password:
        raise ValueError("an S3 endpoint holds no credentials (use AWS_* variables)")
    return text.rstrip("/")


def _absolute_path(value: str) -> str:
    path = os.path.expanduser(value.strip())
    if path and not os.path.isabs(path):
        raise ValueError(f"not an absolute path: {value[:80]!r}")
    return os.path.normpath(path) if path else ""


_REGION = re.compile(r"[a-z0-9-]{0,40}")


def _region(value: str) -> str:
    word = value.strip()
    if not _REGION.fullmatch(word):
        raise ValueError(f"not a region name: {value[:40]!r}")
    return word


MAX_TIER_TIMEOUT = 600.0


def _tier_timeout(value: object, text: bool) -> float:
    seconds = _seconds(value, text)
    if seconds > MAX_TIER_TIMEOUT:
        raise ValueError(f"must be more than 0 and at most {MAX_TIER_TIMEOUT:.0f} seconds")
    return seconds


def _interval(value: object, text: bool) -> float:
    """Seconds between periodic checkpoints; 0 for none."""
    if (isinstance(value, str) and value.strip() in ("0", "off")) or (
        isinstance(value, int | float) and not isinstance(value, bool) and value == 0
    ):
        return 0.0
    return _seconds(value, text)


LOG_LEVELS = ("warning", "info", "debug")


def _log_level(value: object, text: bool) -> str:
    if not isinstance(value, str):
        raise _WrongType(" or ".join(f'"{level}"' for level in LOG_LEVELS), value)
    word = value.strip().lower()
    if word not in LOG_LEVELS:
        raise ValueError(f"not a log level: {value[:40]!r} (say warning, info or debug)")
    return word


def verbosity(level: str) -> int:
    """``-v`` counted: 0 for warning, 1 for info, 2 for debug."""
    return LOG_LEVELS.index(level)


# -- the settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """A setting's flag: its name, the ``argparse`` destination, and the commands having it."""

    name: str
    dest: str
    commands: tuple[str, ...]


@dataclass(frozen=True)
class Setting:
    key: str
    """``table.name`` in the file."""
    variable: str
    parse: Callable[[object, bool], Any]
    default: Any
    """None: worked out where it is used (``default_note`` says how)."""
    help: str
    flag: Flag | None = None
    default_note: str = ""

    def text(self, value: Any) -> str:
        """``value`` as its variable holds it."""
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        if value == "":
            return NONE
        return str(value)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "cache.max_size",
        "ARTIFACTFS_CACHE_MAX_SIZE",
        _size,
        None,
        "the blob cache's size cap (10G, 500M, or bytes); least recently used blobs go past it",
        Flag("--cache-max-size", "cache_max_size", ("mount", "daemon")),
        default_note="10 % of the state home's file system, at least 1 GiB, at most 10 GiB",
    ),
    Setting(
        "fetch.io_timeout",
        "ARTIFACTFS_IO_TIMEOUT",
        _seconds,
        60.0,
        "seconds an origin may stay silent before a prepare fails or a read returns EIO",
        Flag("--io-timeout", "io_timeout", ("mount", "clone", "daemon")),
    ),
    Setting(
        "fetch.offline",
        "ARTIFACTFS_OFFLINE",
        _boolean,
        False,
        "send nothing to any origin: serve what the state home holds",
        Flag("--offline", "offline", ("mount", "clone")),
    ),
    Setting(
        "hf.cache",
        "ARTIFACTFS_HF_CACHE",
        _hf_cache,
        HF_CACHE_AUTO,
        "the huggingface_hub cache to take Hub files from: auto (huggingface_hub's own), off,"
        " or a directory",
    ),
    Setting(
        "tier.url",
        "ARTIFACTFS_TIER_URL",
        _text(check_url, '"s3://BUCKET/PREFIX" or "file:///PATH"'),
        "",
        "the shared tier behind the blob cache: s3://BUCKET/PREFIX or file:///PATH (empty: none)",
    ),
    Setting(
        "tier.endpoint",
        "ARTIFACTFS_TIER_ENDPOINT",
        _text(check_endpoint, '"http(s)://HOST[:PORT]"'),
        "",
        "an S3-compatible endpoint (MinIO, R2, Ceph); empty: AWS_ENDPOINT_URL or AWS itself",
    ),
    Setting(
        "tier.region",
        "ARTIFACTFS_TIER_REGION",
        _text(_region, "a region name"),
        "",
        "the S3 region; empty: AWS_REGION, AWS_DEFAULT_REGION or us-east-1",
    ),
    Setting(
        "tier.timeout",
        "ARTIFACTFS_TIER_TIMEOUT",
        _tier_timeout,
        5.0,
        "seconds the tier may take to connect or stay silent before a read goes to the origin"
        " instead",
    ),
    Setting(
        "tier.credentials_file",
        "ARTIFACTFS_TIER_CREDENTIALS_FILE",
        _text(_absolute_path, "an absolute path"),
        "",
        "an AWS shared credentials file (profile AWS_PROFILE or default); empty: the AWS_*"
        " variables, else AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials",
    ),
    Setting(
        "checkpoint.interval",
        "ARTIFACTFS_CHECKPOINT_INTERVAL",
        _interval,
        0.0,
        "seconds between automatic checkpoints of a writable workspace to the tier (0: none;"
        " a clean stop checkpoints too when it is set)",
    ),
    Setting(
        "log.level",
        "ARTIFACTFS_LOG_LEVEL",
        _log_level,
        "warning",
        "what reaches stderr: warning, info (-v) or debug (-vv); log files keep info or more",
        Flag("-v", "verbose", ("mount", "clone", "daemon")),
    ),
)
BY_KEY = {setting.key: setting for setting in SETTINGS}
NOT_IN_THE_FILE = "ARTIFACTFS_HOME"
"""The state home is found before the file is: the file cannot say where it is."""


def flags_of(command: str, namespace: object) -> dict[str, tuple[str, object]]:
    """The settings given as flags to ``command``: key -> (flag, value). A flag left out
    (argparse's None, False or a count of 0) is no value."""
    given: dict[str, tuple[str, object]] = {}
    for setting in SETTINGS:
        flag = setting.flag
        if flag is None or command not in flag.commands:
            continue
        value = getattr(namespace, flag.dest, None)
        if value is None or value is False:
            continue
        if setting.key == "log.level":
            if not value:
                continue
            value = LOG_LEVELS[min(int(value), len(LOG_LEVELS) - 1)]
        given[setting.key] = (flag.name, value)
    return given


# -- resolving --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    setting: Setting
    value: Any
    source: str
    """``flag --io-timeout``, ``variable ARTIFACTFS_IO_TIMEOUT``, ``file PATH`` or
    ``default``."""


class Settings(Mapping[str, Any]):
    """Every setting's effective value (``settings["fetch.io_timeout"]``) and its source."""

    def __init__(self, path: Path, values: dict[str, Value]) -> None:
        self.path = path
        self.entries = values

    def __getitem__(self, key: str) -> Any:
        return self.entries[key].value

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def source(self, key: str) -> str:
        return self.entries[key].source

    def export(
        self, environ: MutableMapping[str, str], worked_out: Mapping[str, Any] | None = None
    ) -> None:
        """Put every value into ``environ`` as its variable, for this process's lower layers
        and every process it starts. A default that is worked out where it is used (None
        here) goes in only if ``worked_out`` has it, by key."""
        for key, entry in self.entries.items():
            value = entry.value if entry.value is not None else (worked_out or {}).get(key)
            if value is not None:
                environ[entry.setting.variable] = entry.setting.text(value)

    def summary(self, worked_out: Mapping[str, Any] | None = None) -> str:
        """One line for a log: ``key=value (source), …``."""
        parts = []
        for key, entry in self.entries.items():
            value = entry.value if entry.value is not None else (worked_out or {}).get(key)
            parts.append(f"{key}={entry.setting.text(value)} ({entry.source})")
        return ", ".join(parts)


def file_path(home: Path) -> Path:
    return home / FILE_NAME


def resolve(
    home: Path,
    flags: Mapping[str, tuple[str, object]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Every setting's value: flag > variable > file > default. Raises ValueError (one line)
    for a bad value anywhere, an unknown key, or a file that cannot be read or parsed. The
    file is read only if some setting is left to it."""
    env = os.environ if environ is None else environ
    flags = flags or {}
    path = file_path(home)
    found: dict[str, Value] = {}
    for setting in SETTINGS:
        if setting.key in flags:
            name, raw = flags[setting.key]
            found[setting.key] = Value(setting, _parse(setting, raw, True, name), f"flag {name}")
            continue
        text = env.get(setting.variable, "")
        if text.strip():
            value = _parse(setting, text, True, setting.variable)
            found[setting.key] = Value(setting, value, f"variable {setting.variable}")
    if len(found) < len(SETTINGS):
        in_file = read_file(path)
        for setting in SETTINGS:
            if setting.key in found:
                continue
            if setting.key in in_file:
                value = in_file[setting.key]
                found[setting.key] = Value(setting, value, f"file {path}")
            else:
                found[setting.key] = Value(setting, setting.default, "default")
    return Settings(path, {setting.key: found[setting.key] for setting in SETTINGS})


def _parse(setting: Setting, raw: object, text: bool, where: str) -> Any:
    try:
        return setting.parse(raw, text)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def read_file(path: Path) -> dict[str, Any]:
    """The settings ``path`` holds, checked: key -> value. A missing file holds none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ValueError(f"cannot read the settings file {path}: {exc.strerror}") from None
    try:
        tables = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"the settings file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"the settings file {path} is not valid TOML: {exc}") from None
    groups = {setting.key.split(".")[0] for setting in SETTINGS}
    found: dict[str, Any] = {}
    for group, table in tables.items():
        if group not in groups:
            raise ValueError(f"unknown setting {group!r} in {path}{_known()}")
        if not isinstance(table, dict):
            raise ValueError(
                f"{group} in {path}: must be a table ([{group}]), not {_type_name(table)}"
            )
        for name, raw in table.items():
            key = f"{group}.{name}"
            setting = BY_KEY.get(key)
            if setting is None:
                raise ValueError(f"unknown setting {key!r} in {path}{_known()}")
            found[key] = _parse(setting, raw, False, f"{key} in {path}")
    return found


def _known() -> str:
    return " (known: " + ", ".join(setting.key for setting in SETTINGS) + ")"
