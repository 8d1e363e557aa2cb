"""Grouped train/val/test splits, deterministic from the seed.

What must not leak from train into val/test is named by `data.split.group_by`:

- `subject`: no listener is in two splits (a listener's physiology is learnt, not the music's effect);
- `stimulus`: no song/clip is in two splits (an audio model can't score by memorising a song);
- `subject_and_stimulus`: both. A recording whose listener and song land in different splits can't be kept
  without a leak, so it is dropped; what is dropped is returned, counted and reported.

Groups are keyed per dataset (ids are only unique within a corpus). `group_key` and `rank` are the building
blocks; grouped k-fold cross-validation reuses them.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from a2b_pipeline.data.recording import Recording

SPLITS = ("train", "val", "test")
GroupBy = Literal["subject", "stimulus", "subject_and_stimulus"]
GroupKind = Literal["subject", "stimulus"]
GroupKey = tuple[str, str]  # (dataset, id)


def group_key(rec: Recording, kind: GroupKind) -> GroupKey:
    """The group a recording belongs to: its (dataset, subject) or (dataset, stimulus). A recording without a
    stimulus id is its own stimulus (nobody else heard it)."""
    if kind == "subject":
        return rec.dataset, rec.subject_id
    return rec.dataset, stimulus_id(rec)


def stimulus_id(rec: Recording) -> str:
    """The recording's stimulus, or a name of its own ("recording:<id>") when the corpus gives none."""
    return rec.stimulus_id if rec.stimulus_id is not None else f"recording:{rec.recording_id}"


def group_kinds(group_by: GroupBy) -> tuple[GroupKind, ...]:
    """The kinds of group that must be disjoint across splits (or folds)."""
    return ("subject", "stimulus") if group_by == "subject_and_stimulus" else (group_by,)


def rank(seed: int, key: GroupKey) -> str:
    """A group's place in the seeded order: sha256 of (seed, dataset, id). The order of the other groups
    doesn't change when one is added or removed, so only groups at split boundaries can move."""
    return hashlib.sha256(f"{seed}\0{key[0]}\0{key[1]}".encode()).hexdigest()


def ranked(keys: Iterable[GroupKey], seed: int) -> list[GroupKey]:
    return sorted(set(keys), key=lambda k: rank(seed, k))


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) group counts: rounded fractions, at least one group in each split with a
    positive fraction when there are >= 3 groups; with fewer, train keeps one, then val, then test."""
    n_val = round(n * val_fraction)
    n_test = round(n * test_fraction)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if test_fraction > 0:
        n_test = max(n_test, 1)
    # Too few groups: shrink the larger of val/test (test on a tie) until train keeps one group.
    while n_val + n_test > max(n - 1, 0):
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def assign_ranked(order: list[GroupKey], val_fraction: float, test_fraction: float) -> dict[GroupKey, str]:
    """Test takes the first groups of `order`, val the next ones, train the rest."""
    _, n_val, n_test = split_counts(len(order), val_fraction, test_fraction)
    return {
        k: SPLITS[2] if i < n_test else SPLITS[1] if i < n_test + n_val else SPLITS[0]
        for i, k in enumerate(order)
    }


@dataclass
class Dropped:
    """A recording left out of every split, and why."""

    rec: Recording
    reason: str


@dataclass
class GroupedSplit:
    parts: dict[str, list[Recording]]  # split -> recordings, in input order
    dropped: list[Dropped] = field(default_factory=list)


def split_grouped(
    recordings: list[Recording],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    group_by: GroupBy = "subject",
) -> GroupedSplit:
    """Split recordings so that no group of `group_by` is in two splits (see the module docstring).

    `subject` and `stimulus`: groups in seeded order (`rank`), test takes the first, val the next, train the
    rest, by the fractions. `subject_and_stimulus`: subjects as for `subject`; a stimulus heard by one
    subject only follows that subject (nothing to leak, nothing dropped); shared stimuli are split by the
    same fractions, test first, each split taking the stimuli most heard by its own subjects (seeded order
    breaks ties), so the few test and val subjects keep as many recordings as they can. Recordings whose
    subject and stimulus land in different splits are dropped.
    """
    parts: dict[str, list[Recording]] = {s: [] for s in SPLITS}
    if group_by != "subject_and_stimulus":
        where = assign_ranked(
            ranked((group_key(r, group_by) for r in recordings), seed), val_fraction, test_fraction
        )
        for r in recordings:
            parts[where[group_key(r, group_by)]].append(r)
        return GroupedSplit(parts)

    subject_split = assign_ranked(
        ranked((group_key(r, "subject") for r in recordings), seed), val_fraction, test_fraction
    )
    stimulus_split = _assign_shared_stimuli(recordings, subject_split, val_fraction, test_fraction, seed)
    dropped = []
    for r in recordings:
        by_subject = subject_split[group_key(r, "subject")]
        by_stimulus = stimulus_split.get(group_key(r, "stimulus"), by_subject)
        if by_subject == by_stimulus:
            parts[by_subject].append(r)
        else:
            reason = (
                f"subject {r.subject_id!r} is in {by_subject} but stimulus {stimulus_id(r)!r} is in "
                f"{by_stimulus} (data.split.group_by: subject_and_stimulus)"
            )
            dropped.append(Dropped(r, reason))
    return GroupedSplit(parts, dropped)


def _assign_shared_stimuli(
    recordings: list[Recording],
    subject_split: dict[GroupKey, str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[GroupKey, str]:
    """Split of every stimulus heard by two or more subjects (the others follow their subject)."""
    listeners: dict[GroupKey, set[GroupKey]] = defaultdict(set)
    for r in recordings:
        listeners[group_key(r, "stimulus")].add(group_key(r, "subject"))
    shared = ranked((k for k, subs in listeners.items() if len(subs) > 1), seed)
    _, n_val, n_test = split_counts(len(shared), val_fraction, test_fraction)
    out: dict[GroupKey, str] = {}
    left = list(shared)
    for split, n in (("test", n_test), ("val", n_val)):
        heard = Counter({k: sum(subject_split[s] == split for s in listeners[k]) for k in left})
        # sorted() is stable: among equally heard stimuli the seeded order decides
        chosen = sorted(left, key=lambda k: -heard[k])[:n]
        out.update({k: split for k in chosen})
        left = [k for k in left if k not in out]
    out.update({k: "train" for k in left})
    return out


def split_recordings(
    recordings: list[Recording],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    group_by: GroupBy = "subject",
) -> dict[str, list[Recording]]:
    """{"train", "val", "test"} -> recordings (see `split_grouped`; dropped recordings are left out)."""
    return split_grouped(recordings, val_fraction, test_fraction, seed, group_by).parts


# ---- grouped k-fold cross-validation ----


def fold_assignment(recordings: list[Recording], folds: int, seed: int, group_by: GroupBy) -> list[int]:
    """The test fold of each recording (input order), or -1 for one no fold can test without a leak.

    Groups are dealt round-robin in seeded order (`ranked`), so fold sizes differ by at most one group and
    each group is in exactly one fold. `subject_and_stimulus`: subjects are dealt; a stimulus heard by one
    subject follows that subject; a shared stimulus goes to the fold holding most of its listeners (ties:
    the fold with fewest shared stimuli so far, then the lower fold), and a recording whose subject and
    stimulus are in different folds is tested by none (it can still train the folds that test neither).
    """
    kinds = group_kinds(group_by)
    first = ranked((group_key(r, kinds[0]) for r in recordings), seed)
    if len(first) < folds:
        datasets = sorted({r.dataset for r in recordings})
        raise ValueError(
            f"data.split.folds={folds}: dataset {', '.join(datasets)} has only {len(first)} "
            f"{kinds[0]}(s) to deal into folds"
        )
    fold_of = {k: i % folds for i, k in enumerate(first)}
    if len(kinds) == 1:
        return [fold_of[group_key(r, kinds[0])] for r in recordings]
    listeners: dict[GroupKey, set[GroupKey]] = defaultdict(set)
    for r in recordings:
        listeners[group_key(r, "stimulus")].add(group_key(r, "subject"))
    stimulus_fold: dict[GroupKey, int] = {}
    shared_per_fold = [0] * folds
    for stim in ranked((k for k, subs in listeners.items() if len(subs) > 1), seed):
        heard = Counter(fold_of[s] for s in listeners[stim])
        best = min(range(folds), key=lambda f: (-heard[f], shared_per_fold[f], f))
        stimulus_fold[stim] = best
        shared_per_fold[best] += 1
    out = []
    for r in recordings:
        by_subject = fold_of[group_key(r, "subject")]
        out.append(
            by_subject if stimulus_fold.get(group_key(r, "stimulus"), by_subject) == by_subject else -1
        )
    return out


def split_fold(
    recordings: list[Recording],
    folds: int,
    fold: int,
    val_fraction: float,
    seed: int,
    group_by: GroupBy = "subject",
) -> GroupedSplit:
    """Fold `fold` of grouped k-fold CV: test = the recordings of that fold's groups; the recordings that
    share no group with them are split into train/val (`split_grouped` with val_fraction, no test); the
    rest (a subject or stimulus of this fold's test set) are dropped with the reason."""
    if not 0 <= fold < folds:
        raise ValueError(f"data.split.fold={fold} is not in 0..{folds - 1}")
    assigned = fold_assignment(recordings, folds, seed, group_by)
    test = [r for r, f in zip(recordings, assigned, strict=True) if f == fold]
    held = {kind: {group_key(r, kind) for r in test} for kind in group_kinds(group_by)}
    # A group is tested in this fold when any of its recordings is; none of its recordings may train.
    pool, dropped = [], []
    for r, f in zip(recordings, assigned, strict=True):
        if f == fold:
            continue
        leak = [kind for kind in held if group_key(r, kind) in held[kind]]
        if leak:
            reason = f"its {' and '.join(leak)} is in the test set of fold {fold} (data.split.folds={folds})"
            dropped.append(Dropped(r, reason))
        else:
            pool.append(r)
    rest = split_grouped(pool, val_fraction, 0.0, seed, group_by)
    parts = {"train": rest.parts["train"], "val": rest.parts["val"], "test": test}
    order = {id(r): i for i, r in enumerate(recordings)}
    parts = {s: sorted(recs, key=lambda r: order[id(r)]) for s, recs in parts.items()}
    return GroupedSplit(parts, dropped + rest.dropped)
