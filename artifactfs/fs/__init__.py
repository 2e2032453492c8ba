"""The FUSE side: operations over a snapshot and the CAS, and the ready gate in front of them."""
