"""The settings (artifactfs/settings.py): flag > variable > config.toml > default for every
key, every bad value refused with one line naming the key and where it was (the file, the
variable or the flag), and what a daemon hands its workers (``export``)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest

from artifactfs.settings import (
    BY_KEY,
    SETTINGS,
    Settings,
    file_path,
    flags_of,
    read_file,
    resolve,
)

# per key: (TOML text, the value it gives) for the file, the variable and the flag, all different
SOURCES: dict[str, dict[str, tuple[str, Any]]] = {
    "cache.max_size": {
        "file": ('"3M"', 3 << 20),
        "variable": ("5M", 5 << 20),
        "flag": ("7M", 7 << 20),
    },
    "fetch.io_timeout": {
        "file": ("3", 3.0),
        "variable": ("5.5", 5.5),
        "flag": (7.0, 7.0),
    },
    "fetch.offline": {
        "file": ("true", True),
        "variable": ("0", False),
        "flag": (True, True),
    },
    "hf.cache": {
        "file": ('"/srv/hub"', "/srv/hub"),
        "variable": ("off", "off"),
        "flag": ("", ""),  # no flag
    },
    "log.level": {
        "file": ('"debug"', "debug"),
        "variable": ("INFO", "info"),
        "flag": ("warning", "warning"),
    },
    "tier.url": {
        "file": ('"s3://fleet-store/models/"', "s3://fleet-store/models"),
        "variable": ("file:///srv/tier", "file:///srv/tier"),
        "flag": ("", ""),
    },
    "tier.endpoint": {
        "file": ('"http://127.0.0.1:9000/"', "http://127.0.0.1:9000"),
        "variable": ("https://s3.example.com", "https://s3.example.com"),
        "flag": ("", ""),
    },
    "tier.region": {
        "file": ('"eu-west-1"', "eu-west-1"),
        "variable": ("auto", "auto"),
        "flag": ("", ""),
    },
    "tier.timeout": {
        "file": ("2", 2.0),
        "variable": ("0.5", 0.5),
        "flag": ("", ""),
    },
    "tier.credentials_file": {
        "file": ('"/etc/artifactfs/aws"', "/etc/artifactfs/aws"),
        "variable": ("/run/secrets/aws", "/run/secrets/aws"),
        "flag": ("", ""),
    },
    "checkpoint.interval": {
        "file": ("300", 300.0),
        "variable": ("0", 0.0),
        "flag": ("", ""),
    },
}


def write(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = file_path(home)
    path.write_text(text)
    return path


def toml_for(key: str, value_text: str) -> str:
    group, name = key.split(".")
    return f"[{group}]\n{name} = {value_text}\n"


def test_every_setting_is_declared_once_with_a_variable_and_a_group() -> None:
    assert [s.key for s in SETTINGS] == list(BY_KEY)
    assert set(SOURCES) == set(BY_KEY)
    for setting in SETTINGS:
        assert setting.key.count(".") == 1
        assert setting.variable.startswith("ARTIFACTFS_")
        assert setting.help
    assert BY_KEY["cache.max_size"].variable == "ARTIFACTFS_CACHE_MAX_SIZE"
    assert BY_KEY["hf.cache"].variable == "ARTIFACTFS_HF_CACHE"
    assert BY_KEY["fetch.offline"].variable == "ARTIFACTFS_OFFLINE"
    assert "ARTIFACTFS_HOME" not in {s.variable for s in SETTINGS}


def test_defaults_with_no_file_and_no_variable(tmp_path: Path) -> None:
    settings = resolve(tmp_path / "absent", environ={})
    assert dict(settings) == {
        "cache.max_size": None,  # worked out for the home's file system (cas/eviction.py)
        "fetch.io_timeout": 60.0,
        "fetch.offline": False,
        "hf.cache": "auto",
        "tier.url": "",
        "tier.endpoint": "",
        "tier.region": "",
        "tier.timeout": 5.0,
        "tier.credentials_file": "",
        "checkpoint.interval": 0.0,
        "log.level": "warning",
    }
    assert {settings.source(key) for key in settings} == {"default"}
    assert not (tmp_path / "absent").exists()


COMBINATIONS = [
    (key, given)
    for key in sorted(SOURCES)
    for n in range(4)
    for given in itertools.combinations(("flag", "variable", "file"), n)
    if BY_KEY[key].flag is not None or "flag" not in given  # hf.cache has no flag
]


@pytest.mark.parametrize(("key", "given"), COMBINATIONS)
def test_precedence_flag_variable_file_default(
    key: str, given: tuple[str, ...], tmp_path: Path
) -> None:
    setting = BY_KEY[key]
    home = tmp_path / "home"
    sources = SOURCES[key]
    if "file" in given:
        write(home, toml_for(key, sources["file"][0]))
    environ = {setting.variable: sources["variable"][0]} if "variable" in given else {}
    flags = {}
    if "flag" in given:
        assert setting.flag is not None
        flags[key] = (setting.flag.name, sources["flag"][0])
    settings = resolve(home, flags, environ)
    for source in ("flag", "variable", "file"):  # the first one given wins
        if source in given:
            assert settings[key] == sources[source][1]
            expected = {
                "flag": f"flag {setting.flag.name if setting.flag else ''}",
                "variable": f"variable {setting.variable}",
                "file": f"file {file_path(home)}",
            }[source]
            assert settings.source(key) == expected
            break
    else:
        assert settings[key] == setting.default
        assert settings.source(key) == "default"
    others = [k for k in BY_KEY if k != key]
    assert all(settings.source(k) == "default" for k in others)


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write(home, "[fetch]\nio_timeout = 9\n[cache]\nmax_size = 4096\n")
    settings = resolve(home, {}, {"ARTIFACTFS_IO_TIMEOUT": "  ", "ARTIFACTFS_CACHE_MAX_SIZE": ""})
    assert settings["fetch.io_timeout"] == 9.0
    assert settings["cache.max_size"] == 4096
    assert settings.source("cache.max_size") == f"file {file_path(home)}"


def test_values_a_file_may_hold(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write(
        home,
        "# a comment\n"
        'cache.max_size = "1.5GiB"\n'
        "fetch = { io_timeout = 0.5, offline = false }\n"
        '[hf]\ncache = "~/hub"\n'
        '[log]\nlevel = "Info"\n',
    )
    settings = resolve(home, {}, {})
    assert settings["cache.max_size"] == 3 << 29
    assert settings["fetch.io_timeout"] == 0.5
    assert settings["fetch.offline"] is False
    assert settings["hf.cache"] == os.path.expanduser("~/hub")
    assert settings["log.level"] == "info"
    write(home, '[hf]\ncache = "OFF"\n[cache]\nmax_size = 10737418240\n')
    assert resolve(home, {}, {})["hf.cache"] == "off"
    assert resolve(home, {}, {})["cache.max_size"] == 10 << 30
    write(home, "")
    assert {resolve(home, {}, {}).source(k) for k in BY_KEY} == {"default"}


# -- bad values -------------------------------------------------------------------------------

BAD_IN_FILE = [
    # every key: a wrong type, a table where a value is expected, and values out of range
    ("cache.max_size", "true", "must be a size"),
    ("cache.max_size", "1.5", "must be a size"),
    ("cache.max_size", "[1, 2]", "not an array"),
    ("cache.max_size", "{ a = 1 }", "not a table"),
    ("cache.max_size", "-5", "more than 0 bytes"),
    ("cache.max_size", "0", "more than 0 bytes"),
    ("cache.max_size", '"lots"', "not a size"),
    ("cache.max_size", '"10X"', "not a size"),
    ("cache.max_size", '"-1G"', "not a size"),
    ("cache.max_size", '"9999999T"', "size too large"),
    ("cache.max_size", "9223372036854775807", "size too large"),
    ("fetch.io_timeout", '"60"', "must be a number of seconds, not a string"),
    ("fetch.io_timeout", "true", "not a boolean"),
    ("fetch.io_timeout", "{ s = 1 }", "not a table"),
    ("fetch.io_timeout", "-1", "more than 0"),
    ("fetch.io_timeout", "0", "more than 0"),
    ("fetch.io_timeout", "86401", "at most 86400"),
    ("fetch.io_timeout", "inf", "more than 0"),
    ("fetch.io_timeout", "nan", "more than 0"),
    ("fetch.io_timeout", "1979-05-27", "not a date or time"),
    ("fetch.offline", '"yes"', "must be true or false, not a string"),
    ("fetch.offline", "1", "not an integer"),
    ("fetch.offline", "{ on = true }", "not a table"),
    ("hf.cache", "false", "not a boolean"),
    ("hf.cache", "[]", "not an array"),
    ("hf.cache", '"relative/dir"', "not an absolute directory"),
    ("hf.cache", "{ dir = '/x' }", "not a table"),
    ("log.level", '"loud"', "not a log level"),
    ("log.level", "2", "not an integer"),
    ("log.level", "{ x = 1 }", "not a table"),
    ("tier.url", '"http://bucket/x"', "a tier url is s3://BUCKET/PREFIX"),
    ("tier.url", '"s3://Bad_Bucket/x"', "not an S3 bucket name"),
    ("tier.url", '"s3://key:secret@bucket/x"', "holds no credentials"),
    ("tier.url", '"file://relative"', "needs an absolute path"),
    ("tier.url", "1", "not an integer"),
    ("tier.endpoint", '"127.0.0.1:9000"', "an S3 endpoint is http(s)://HOST[:PORT]"),
    ("tier.endpoint", '"http://user:pw@host"', "holds no credentials"),
    ("tier.region", '"Not A Region"', "not a region name"),
    ("tier.timeout", "0", "more than 0"),
    ("tier.timeout", "601", "at most 600"),
    ("tier.credentials_file", '"aws/credentials"', "not an absolute path"),
    ("checkpoint.interval", "-5", "more than 0"),
    ("checkpoint.interval", '"hourly"', "not a string"),
]


@pytest.mark.parametrize(("key", "value", "says"), BAD_IN_FILE)
def test_a_bad_value_in_the_file_names_the_key_and_the_file(
    key: str, value: str, says: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    path = write(home, toml_for(key, value))
    with pytest.raises(ValueError) as caught:
        resolve(home, {}, {})
    message = str(caught.value)
    assert message.startswith(f"{key} in {path}: "), message
    assert says in message
    assert "\n" not in message
    assert sorted(p.name for p in home.iterdir()) == ["config.toml"]  # nothing written


def test_every_key_has_a_bad_value_tested() -> None:
    assert {key for key, _, _ in BAD_IN_FILE} == set(BY_KEY)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[cache]\nmax_sise = "1G"\n', "unknown setting 'cache.max_sise' in "),
        ('[tiers]\nurl = "s3://bucket/x"\n', "unknown setting 'tiers' in "),
        ("io_timeout = 5\n", "unknown setting 'io_timeout' in "),
        ("cache = 5\n", "cache in {path}: must be a table ([cache]), not an integer"),
        ('cache = "10G"\n', "cache in {path}: must be a table ([cache]), not a string"),
        ("[cache.max_size]\nvalue = 1\n", "cache.max_size in {path}: must be a size"),
        ("[cache]\nmax_size = \n", "is not valid TOML"),
        ("[cache\n", "is not valid TOML"),
        ('[cache]\nmax_size = "1G"\nmax_size = "2G"\n', "is not valid TOML"),
        ("[fetch]\nio_timeout = 5 5\n", "is not valid TOML"),
    ],
)
def test_a_bad_file_is_one_line(text: str, says: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = write(home, text)
    with pytest.raises(ValueError) as caught:
        resolve(home, {}, {})
    message = str(caught.value)
    assert says.format(path=path) in message
    assert str(path) in message
    assert "\n" not in message


def test_an_unknown_key_names_the_known_ones(tmp_path: Path) -> None:
    write(tmp_path, "[log]\nverbosity = 2\n")
    with pytest.raises(ValueError, match=r"known: cache\.max_size, .*log\.level\)$"):
        resolve(tmp_path, {}, {})


def test_a_file_that_is_not_text_or_cannot_be_read(tmp_path: Path) -> None:
    path = file_path(tmp_path)
    path.write_bytes(b"[log]\nlevel = '\xff'\n")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_file(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(ValueError, match=f"^cannot read the settings file {path}: "):
        read_file(path)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ARTIFACTFS_CACHE_MAX_SIZE", "lots", "not a size"),
        ("ARTIFACTFS_CACHE_MAX_SIZE", "0", "more than 0 bytes"),
        ("ARTIFACTFS_CACHE_MAX_SIZE", "-3M", "not a size"),
        ("ARTIFACTFS_IO_TIMEOUT", "soon", "not a number of seconds"),
        ("ARTIFACTFS_IO_TIMEOUT", "-2", "more than 0"),
        ("ARTIFACTFS_IO_TIMEOUT", "1e9", "at most 86400"),
        ("ARTIFACTFS_IO_TIMEOUT", "nan", "more than 0"),
        ("ARTIFACTFS_OFFLINE", "maybe", "not a boolean"),
        ("ARTIFACTFS_HF_CACHE", "hub", "not an absolute directory"),
        ("ARTIFACTFS_LOG_LEVEL", "verbose", "not a log level"),
    ],
)
def test_a_bad_variable_names_the_variable(
    variable: str, value: str, says: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError) as caught:
        resolve(tmp_path, {}, {variable: value})
    assert str(caught.value).startswith(f"{variable}: ")
    assert says in str(caught.value)


def test_a_bad_flag_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^--io-timeout: must be more than 0"):
        resolve(tmp_path, {"fetch.io_timeout": ("--io-timeout", 0.0)}, {})
    with pytest.raises(ValueError, match=r"^--cache-max-size: not a size"):
        resolve(tmp_path, {"cache.max_size": ("--cache-max-size", "big")}, {})


def test_a_bad_file_is_refused_even_under_a_good_variable(tmp_path: Path) -> None:
    """A typo in the file must not hide behind a variable that happens to be set: the file is
    read whenever some setting is left to it."""
    write(tmp_path, "[cache]\nmax_size = 5\nbogus = 1\n")
    with pytest.raises(ValueError, match=r"unknown setting 'cache\.bogus'"):
        resolve(tmp_path, {}, {"ARTIFACTFS_CACHE_MAX_SIZE": "1G"})


# -- flags, and what a daemon hands its workers -----------------------------------------------


class Namespace:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def test_flags_left_out_are_no_values() -> None:
    given = Namespace(cache_max_size=None, io_timeout=None, offline=False, verbose=0)
    assert flags_of("mount", given) == {}
    given = Namespace(cache_max_size="4M", io_timeout=2.5, offline=True, verbose=3)
    assert flags_of("mount", given) == {
        "cache.max_size": ("--cache-max-size", "4M"),
        "fetch.io_timeout": ("--io-timeout", 2.5),
        "fetch.offline": ("--offline", True),
        "log.level": ("-v", "debug"),
    }
    assert flags_of("mount", Namespace(verbose=1)) == {"log.level": ("-v", "info")}
    # add-repo's --offline is the repository's, registered with it: not the setting
    assert flags_of("add-repo", Namespace(offline=True)) == {}


def test_exported_values_come_back_the_same_without_the_file(tmp_path: Path) -> None:
    """What the daemon puts into its environment is what its workers resolve, whatever the
    file says by then (here: not even valid)."""
    home = tmp_path / "home"
    write(home, '[fetch]\nio_timeout = 7\n[hf]\ncache = "/srv/hub"\n[log]\nlevel = "info"\n')
    daemon = resolve(home, {"fetch.offline": ("--offline", True)}, {})
    environ: dict[str, str] = {}
    daemon.export(environ, {"cache.max_size": 12345})
    assert environ == {
        "ARTIFACTFS_CACHE_MAX_SIZE": "12345",
        "ARTIFACTFS_IO_TIMEOUT": "7",
        "ARTIFACTFS_OFFLINE": "1",
        "ARTIFACTFS_HF_CACHE": "/srv/hub",
        "ARTIFACTFS_LOG_LEVEL": "info",
        "ARTIFACTFS_TIER_URL": "none",  # empty, said so: an empty variable is unset
        "ARTIFACTFS_TIER_ENDPOINT": "none",
        "ARTIFACTFS_TIER_REGION": "none",
        "ARTIFACTFS_TIER_TIMEOUT": "5",
        "ARTIFACTFS_TIER_CREDENTIALS_FILE": "none",
        "ARTIFACTFS_CHECKPOINT_INTERVAL": "0",
    }
    write(home, "not toml at all [")
    worker = resolve(home, {}, environ)
    assert dict(worker) == {**dict(daemon), "cache.max_size": 12345}
    assert {worker.source(k) for k in worker} == {f"variable {s.variable}" for s in SETTINGS}
    assert isinstance(worker, Settings)
    assert "fetch.io_timeout=7 (variable ARTIFACTFS_IO_TIMEOUT)" in worker.summary()


def test_the_documented_example_file_is_valid_and_every_key_is_documented(
    tmp_path: Path,
) -> None:
    """docs/cli.md's example config.toml is read as it stands, and its table names each key."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    home = tmp_path / "home"
    values = read_file(write(home, example))
    assert values["tier.url"] == "s3://fleet-cache/artifactfs"
    assert values["checkpoint.interval"] == 300.0
    for key in BY_KEY:
        assert f"| `{key}` | `{BY_KEY[key].variable}` |" in text, key
