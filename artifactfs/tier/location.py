"""Where the shared tier is: ``tier.url`` and its companions, checked, with credentials looked
up (never stored, never shown).

``s3://BUCKET[/PREFIX]`` is any S3-compatible store (AWS S3, R2, MinIO, Ceph RGW; the endpoint
from ``tier.endpoint`` or ``AWS_ENDPOINT_URL``); ``file:///PATH`` is a directory every node
mounts. Credentials: the standard ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN`` variables, else the profile ``AWS_PROFILE`` (or ``default``) of the
shared credentials file (``tier.credentials_file``, ``AWS_SHARED_CREDENTIALS_FILE`` or
``~/.aws/credentials``), else none (a public or anonymous bucket).
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..settings import check_endpoint


@dataclass(frozen=True)
class TierLocation:
    url: str
    endpoint: str = ""
    region: str = "us-east-1"
    timeout: float = 5.0
    """Seconds any one tier request may take before the tier counts as down for it."""
    credentials_file: str = ""
    environ: Mapping[str, str] | None = field(default=None, repr=False)  # it holds secrets

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def path(self) -> str:
        """The key prefix (s3) or the directory (file)."""
        parts = urlsplit(self.url)
        return parts.path if self.scheme == "file" else parts.path.strip("/")

    @property
    def display(self) -> str:
        if self.endpoint and self.scheme == "s3":
            return f"{self.url} at {self.endpoint}"
        return self.url

    def credentials(self) -> dict[str, str]:
        """obstore's config keys for the credentials to use; empty if the environment's own
        ``AWS_*`` variables (which obstore reads) or nothing are to be used."""
        env = os.environ if self.environ is None else self.environ
        if env.get("AWS_ACCESS_KEY_ID"):
            found = {
                "access_key_id": env["AWS_ACCESS_KEY_ID"],
                "secret_access_key": env.get("AWS_SECRET_ACCESS_KEY", ""),
            }
            if env.get("AWS_SESSION_TOKEN"):
                found["token"] = env["AWS_SESSION_TOKEN"]
            return found
        path = (
            self.credentials_file
            or env.get("AWS_SHARED_CREDENTIALS_FILE", "")
            or str(Path(env.get("HOME", "/root")) / ".aws" / "credentials")
        )
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            return {}
        profile = env.get("AWS_PROFILE", "default")
        if not parser.has_section(profile):
            return {}
        section = parser[profile]
        found = {}
        for ours, theirs in (
            ("access_key_id", "aws_access_key_id"),
            ("secret_access_key", "aws_secret_access_key"),
            ("token", "aws_session_token"),
        ):
            if section.get(theirs):
                found[ours] = section[theirs].strip()
        return found


def location_from(settings: Mapping[str, object]) -> TierLocation | None:
    """The tier the resolved settings name, or None when ``tier.url`` is empty."""
    url = str(settings.get("tier.url") or "")
    if not url:
        return None
    endpoint = str(settings.get("tier.endpoint") or "") or check_endpoint(
        os.environ.get("AWS_ENDPOINT_URL_S3", "") or os.environ.get("AWS_ENDPOINT_URL", "")
    )
    region = (
        str(settings.get("tier.region") or "")
        or os.environ.get("AWS_REGION", "")
        or os.environ.get("AWS_DEFAULT_REGION", "")
        or "us-east-1"
    )
    timeout = settings.get("tier.timeout")
    return TierLocation(
        url=url,
        endpoint=endpoint,
        region=region,
        timeout=float(timeout) if isinstance(timeout, int | float) else 5.0,
        credentials_file=str(settings.get("tier.credentials_file") or ""),
    )
