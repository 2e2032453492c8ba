"""artifactfs: a remote repository as a local directory at once, fetched only where it is read.

The package is layered the way data flows:

- ``cas``: the local content-addressed store every read is served from;
- ``snapshot``: the persisted, immutable index of one commit's tree;
- ``sources``: where snapshots and blob bytes come from (git servers, later the Hub);
- ``fs``: the FUSE operations over a snapshot and the CAS, and the ready gate in front of them;
- ``mount``: one mount worker process (pyfuse3 + trio) tying the above together;
- ``cli``: the ``artifactfs`` command.
"""

__version__ = "0.1.0"
