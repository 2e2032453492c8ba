"""Workspace checkpoints: a workspace's changes in the shared tier, and back on another node.

A checkpoint is three kinds of object in the tier (``tier/keys.py``):

- every upper file and every file of the workspace's git directory, content-addressed
  (``blobs/sha256/…``, create-only puts: identical files are sent once, and a file the tier
  is known or found to hold is not sent again, so a second checkpoint sends what changed);
- a manifest (``manifest.py``, JSON, itself such a blob): the overlay's table (rows, xattrs,
  counters: deletions, renames, modes, owners, symlinks, times), which upper file has which
  digest and times, the git directory's tree, the commit, the source's display form;
- the pointer ``checkpoints/REF`` naming the manifest, moved by compare-and-swap (S3
  ``If-Match``) with the ETag this node last saw (``state.py``): a node that did not see the
  last move loses (``StaleCheckpoint``) and never overwrites it silently.

``capture.py`` reads a workspace (blocking; the mount worker calls it while it holds off
writes, ``fs/hold.py``), ``publish.py`` sends a capture, ``restore.py`` brings one back into a
new workspace directory. Nothing here imports FUSE or a source.
"""

RESTORED_MARKER = "artifactfs-restored"
"""Left in a restored git directory: its worktree (sources/git/worktree.py) then rebuilds its
``config`` from what it would write itself, keeping only the user's identity and branch
tracking, before git runs there: a checkpoint comes from a shared bucket, and a git config
(``core.fsmonitor``, ``alias.*``, a remote's ``ext::`` URL) names programs to run."""
