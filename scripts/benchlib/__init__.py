"""What the benchmarks share (``scripts/bench_*.py``), one job a module.

- ``paths``: where the benchmarks keep their cached inputs and write their results;
- ``cli``: the frame of an entry point: one-line errors, signals, argument types, tools;
- ``repos``: the generated git repositories measured against, made once and cached;
- ``origins``: the servers measured against: ``git daemon``, the Hub stand-in;
- ``mounts``: artifactfs mounts as a benchmark times them, and the mount table;
- ``daemons``: an ``artifactfs daemon`` run by a benchmark;
- ``rounds``: rotating measurement rounds and exact process timing;
- ``report``: the markdown written into ``docs/benchmarks.md``.

Every import from ``artifactfs`` of the benchmark code is in ``scripts/bench_cached_read.py``
and ``scripts/bench_sizes.py``: benchlib itself drives artifactfs only as a program.
"""
