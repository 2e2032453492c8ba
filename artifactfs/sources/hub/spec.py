"""What a Hugging Face Hub SOURCE looks like: ``hf://[datasets/|spaces/]org/name[@revision]``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ...errors import UserError
from ..spec import URL_SCHEME, check_ref

HubRepoType = Literal["model", "dataset", "space"]

_PREFIXES: dict[str, HubRepoType] = {
    "models/": "model",
    "datasets/": "dataset",
    "spaces/": "space",
}
# the Hub's own rule: letters, digits, "-", "_", "."; no "--" or ".."; at most 96 characters
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"(?:{_PART}/)?{_PART}")


@dataclass(frozen=True)
class HubSourceSpec:
    """A Hugging Face Hub repository, and the revision the user named, if any."""

    repo_type: HubRepoType
    repo_id: str
    revision: str | None
    """As typed (a branch, tag or commit); None means ``main``. Pinned to a commit at prepare."""

    @property
    def kind(self) -> str:
        return "hub"

    @property
    def url(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"hf://{self.path_prefix}{self.repo_id}{at}"

    @property
    def display(self) -> str:
        return self.url

    @property
    def path_prefix(self) -> str:
        """How the Hub's URLs name the repository type (models have none)."""
        return "" if self.repo_type == "model" else f"{self.repo_type}s/"

    def shown_ref(self, ref: str | None) -> str:
        return ref or self.revision or "main"

    @property
    def token_variable(self) -> str:
        return "HF_TOKEN"  # huggingface_hub's own

    def with_ref(self, ref: str | None) -> HubSourceSpec:
        """``--ref`` is the revision, given once, not twice."""
        if ref is None:
            return self
        if self.revision is not None and self.revision != ref:
            raise UserError(f"{self.url} already names a revision; drop --ref {ref}")
        return HubSourceSpec(self.repo_type, self.repo_id, ref)

    def at_commit(self, commit: str) -> HubSourceSpec:
        return HubSourceSpec(self.repo_type, self.repo_id, commit)


def parse_hub_source(text: str) -> HubSourceSpec | None:
    """A Hub source, or None unless ``text`` starts with ``hf://``; ``UserError`` if
    malformed."""
    match = URL_SCHEME.match(text)
    if not match or match["scheme"].lower() != "hf":
        return None
    rest = text[match.end() :]
    repo_type: HubRepoType = "model"
    for prefix, kind in _PREFIXES.items():
        if rest.startswith(prefix):
            repo_type, rest = kind, rest[len(prefix) :]
            break
    repo_id, at, revision = rest.partition("@")
    if not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise UserError(
            f"not a Hugging Face repository: {text!r} (use hf://org/name[@revision], "
            "hf://datasets/org/name or hf://spaces/org/name)"
        )
    if at and not revision:
        raise UserError(f"empty revision after '@' in {text!r}")
    return HubSourceSpec(repo_type, repo_id, check_ref(revision) if at else None)
