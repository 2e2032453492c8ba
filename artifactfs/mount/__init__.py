"""One mount worker: pyfuse3 and trio serving a snapshot at a mount point."""
