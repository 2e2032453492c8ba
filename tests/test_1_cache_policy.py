"""The cache's size arithmetic: sizes as users type them, the default cap, the marks."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifactfs.cas.eviction import (
    DEFAULT_MAX,
    DEFAULT_MIN,
    MAX_SIZE_ENV,
    CachePolicy,
    default_max_size,
    format_size,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("12345", 12345),
        ("10G", 10 << 30),
        ("10g", 10 << 30),
        ("500M", 500 << 20),
        ("64k", 64 << 10),
        ("1T", 1 << 40),
        ("1.5G", 3 << 29),
        ("2GiB", 2 << 30),
        ("2GB", 2 << 30),
        ("100B", 100),
        (" 7M ", 7 << 20),
    ],
)
def test_sizes_as_users_type_them(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1G", "10X", "ten", "1e9", "10iB", "1.2.3M", "9" * 30])
def test_bad_sizes_are_one_clear_line(text: str) -> None:
    with pytest.raises(ValueError, match="size") as caught:
        parse_size(text)
    assert "\n" not in str(caught.value)


def test_sizes_for_people() -> None:
    assert format_size(17) == "17 B"
    assert format_size(512 << 10) == "512.0 KiB"
    assert format_size(3 << 30) == "3.0 GiB"


def test_marks_around_the_cap() -> None:
    policy = CachePolicy(1000)
    assert policy.low_water == 900
    assert policy.hard_limit == 1100
    assert not policy.over(1000)
    assert policy.over(1001)


def test_flag_over_variable_over_default(tmp_path: Path) -> None:
    assert CachePolicy.resolve("5M", tmp_path, {MAX_SIZE_ENV: "7M"}).max_size == 5 << 20
    assert CachePolicy.resolve(None, tmp_path, {MAX_SIZE_ENV: "7M"}).max_size == 7 << 20
    default = CachePolicy.resolve(None, tmp_path, {}).max_size
    assert default == default_max_size(tmp_path)
    assert DEFAULT_MIN <= default <= DEFAULT_MAX


def test_bad_cap_names_where_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^--cache-max-size: "):
        CachePolicy.resolve("lots", tmp_path, {})
    with pytest.raises(ValueError, match=rf"^{MAX_SIZE_ENV}: "):
        CachePolicy.resolve(None, tmp_path, {MAX_SIZE_ENV: "10X"})
    with pytest.raises(ValueError, match="more than 0"):
        CachePolicy.resolve("0", tmp_path, {})
