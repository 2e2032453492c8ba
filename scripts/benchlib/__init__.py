"""What the benchmarks share (``scripts/bench_*.py``), one job a module.

- ``paths``: where the benchmarks keep their cached inputs and write their results;
- ``cli``: the frame of an entry point: one-line errors, signals, argument types, tools;
- ``repos``: the generated git repositories measured against, made once and cached;
- ``origins``: the servers measured against: ``git daemon``, the Hub stand-in;
- ``mounts``: artifactfs mounts as a benchmark times them, and the mount table;
- ``daemons``: an ``artifactfs daemon`` run by a benchmark;
- ``rounds``: rotating measurement rounds and exact process timing;
- ``timing``: a process timed to its exit without a polling grid;
- ``report``: the markdown written into ``docs/benchmarks.md``;
- ``internals``: every import from ``artifactfs`` of the benchmark code, in one place (the
  rest drives artifactfs only as a program).

Shared things that the tests have too come from ``tests.helpers`` (servers, process stop,
the mount table, waiting with a deadline), not from copies here.
"""
