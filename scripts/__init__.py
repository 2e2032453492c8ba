"""The project's scripts, a package so that the benchmarks run as ``python -m scripts.NAME``
from the repository root (``scripts/bench`` does): the root is then on ``sys.path``, and they
import ``scripts.benchlib`` and ``tests.helpers`` without touching ``sys.path`` themselves."""
