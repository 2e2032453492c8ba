"""A spare worker: a worker process started before its mount is known (see spares.py).

It imports what every worker needs (trio, pyfuse3, the worker, each kind of source), then waits
on its stdin for one JSON line, ``{"worker": WorkerOptions, "stderr": PATH}``: the mount it is
to serve and the file its stderr goes to. From then on it is exactly the worker ``artifactfs
mount ...`` would have been (``mount.launch.launch``), the rest of its stdin (a token, if any)
included, and it shows that worker's command line as its process title (``ps``). A spare
whose daemon goes away sees its stdin close and exits.

Run as ``python -P -m artifactfs.daemon.spare_child``.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    from artifactfs.errors import UserError
    from artifactfs.mount import worker  # noqa: F401 - imported ahead of need: trio, pyfuse3
    from artifactfs.mount.launch import WorkerOptions, launch
    from artifactfs.sources.registry import preload

    preload()
    line = sys.stdin.readline()
    if not line:
        return 0  # the daemon went away before it needed us
    assignment = json.loads(line)
    fd = os.open(assignment["stderr"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    from setproctitle import setproctitle

    options = WorkerOptions.from_json(assignment["worker"])
    title = [sys.executable, "-P", "-m", "artifactfs", *options.command_line()]
    setproctitle(" ".join(title))  # what ps and /proc/PID/cmdline show: the worker it now is
    try:
        return launch(options)
    except UserError as exc:  # as the command line would say it
        print(f"artifactfs: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
