"""artifactfs: a remote repository as a local directory at once, fetched only where it is read.

The package is layered, lowest first; a layer imports only from layers below it (checked by
tests/test_1_layers.py):

- leaves: ``errors`` (the domain errors every layer speaks), ``redact``, ``home``, ``logs``,
  ``ipc``;
- ``cas``: the local content-addressed store every read is served from;
- ``snapshot``: the persisted, immutable index of one commit's tree;
- ``sources``: where snapshots and file contents come from, behind one interface
  (``sources/base.py``): git servers (``sources/git``) and the Hugging Face Hub
  (``sources/hub``);
- ``fs``: the FUSE operations over snapshots and a source's content, the ready gate in front
  of them, and the one place domain errors become errno;
- ``mount``: one mount worker process (pyfuse3 + trio) tying the above together;
- ``daemon``: the supervisor of many workers, and its registry;
- ``cli``: the ``artifactfs`` command.
"""

__version__ = "0.1.0"
