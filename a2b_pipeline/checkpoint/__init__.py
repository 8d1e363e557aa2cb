"""Checkpoints on disk: directory.py (the run directory's files, digests, pointers, retention), store.py (a
TrainState written, loaded and verified), legacy.py (readers of old schemas), lock.py (one owner per run
directory), checkpointer.py (a run's live parts saved and restored)."""
