"""The writable layer of a workspace: what users changed on top of an immutable snapshot.

A workspace is a snapshot (lower, immutable, shared) plus an overlay kept under the state home
per repository: plain upper files and an SQLite table of what changed. ``journal`` records every
path a change touched, in order, so that git's fsmonitor hook can answer "what changed since
then" without walking the tree.

This package sits between ``snapshot`` and ``sources``: it knows lower entries only by their
row inode numbers, and nothing here imports FUSE.
"""
