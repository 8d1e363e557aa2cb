"""Subject-disjoint train/val/test splits, deterministic from the seed."""

from __future__ import annotations

import hashlib

from a2b_pipeline.data.recording import Recording

SPLITS = ("train", "val", "test")


def _rank(seed: int, dataset: str, subject: str) -> str:
    return hashlib.sha256(f"{seed}\0{dataset}\0{subject}".encode()).hexdigest()


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) subject counts: rounded fractions, at least one subject in each split with a
    positive fraction when there are >= 3 subjects; with fewer, train keeps one, then val, then test."""
    n_val = round(n * val_fraction)
    n_test = round(n * test_fraction)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if test_fraction > 0:
        n_test = max(n_test, 1)
    # Too few subjects: shrink the larger of val/test (test on a tie) until train keeps one subject.
    while n_val + n_test > max(n - 1, 0):
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def split_recordings(
    recordings: list[Recording], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Recording]]:
    """{"train", "val", "test"} -> recordings; no subject is in two splits.

    Subjects are ordered by sha256(seed, dataset, subject): the order of the others doesn't change when a
    subject is added or removed, so only subjects at the split boundaries can move. Test takes the first
    subjects of that order, val the next ones, train the rest. Recordings keep their input order.
    """
    subjects = sorted({(r.dataset, r.subject_id) for r in recordings}, key=lambda k: _rank(seed, *k))
    _, n_val, n_test = split_counts(len(subjects), val_fraction, test_fraction)
    where = {}
    for i, key in enumerate(subjects):
        where[key] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    out: dict[str, list[Recording]] = {s: [] for s in SPLITS}
    for r in recordings:
        out[where[(r.dataset, r.subject_id)]].append(r)
    return out
