"""Checkpoints on disk: the run directory's files, digests and pointers, the lock, the checkpointer."""
