"""The shared tier: an S3 bucket (or a shared directory) behind every node's blob store.

- ``location.py``: where it is (``tier.url``) and the credentials to reach it;
- ``objects.py``: the objects, over S3 (obstore) or a directory: get, ranges, create-only put,
  compare-and-swap;
- ``keys.py``: what is stored under which key;
- ``ledger.py``: which local blobs the tier holds already; the rest is the upload backlog;
- ``read_through.py`` and ``uploads.py``: a CAS miss asks the tier before the origin, and what
  came from an origin is uploaded behind the reader.

Importing this package imports nothing heavy: obstore loads when a store is opened.
"""
