"""The synthetic corpus (data/synthetic.py): generated into `root` on first use, then read as a manifest.

A generated corpus is never rewritten by the pipeline: other experiments may read it. `root/synthetic.json`
records the settings it was generated with; a config that asks for other settings in the same `root` is
refused, naming both (give it a `root` of its own). The corpus is generated whole into a temporary sibling
folder and renamed into place, so no reader ever sees half of it, and two processes generating the same
corpus at once both end with the one that was renamed first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Annotated, Any

from pydantic import Field, PositiveInt

from a2b_pipeline.configs import DataConfig, DatasetConfig, Strict
from a2b_pipeline.data.corpora import CorpusError, CorpusType
from a2b_pipeline.data.recording import Listing

STAMP = "synthetic.json"


class SyntheticSpec(Strict):
    subjects: Annotated[int, Field(gt=0, le=10000)] = 6
    recordings_per_subject: Annotated[int, Field(gt=0, le=1000)] = 3
    seconds: Annotated[float, Field(gt=0.0, le=86400.0)] = 30.0
    seed: Annotated[int, Field(ge=0, lt=2**62)] = 0  # numpy's generators take no negative seed
    # Distinct stimuli (audio clips) shared by the subjects: recording r of subject s plays clip
    # (s + r) mod stimuli, so each clip has several listeners. None: every recording its own clip.
    stimuli: PositiveInt | None = None


class SyntheticDataset(DatasetConfig):
    """A synthetic dataset's option: the generator's settings (used when it generates `root`)."""

    synthetic: SyntheticSpec = SyntheticSpec()


class SyntheticCorpusMismatch(CorpusError):
    """A generated corpus on disk was made with other settings than the config asks for."""


def manifest_path(ds: SyntheticDataset) -> str:
    """`manifest` when set, else root/manifest.csv (where the generator writes it)."""
    return ds.manifest or os.path.join(str(ds.root).rstrip("/"), "manifest.csv")


def generator_spec(ds: SyntheticDataset, data: DataConfig) -> dict[str, Any]:
    """What a synthetic dataset's files are a function of: its generator settings and the channels written."""
    from a2b_pipeline.data.synthetic import GENERATOR_VERSION

    channels = list(dict.fromkeys(["eda", "hr", *data.channels]))  # config channels are always present
    return {
        **ds.synthetic.model_dump(exclude_none=True),
        "channels": channels,
        "generator": GENERATOR_VERSION,
    }


def _read_stamp(root: str) -> dict[str, Any] | None:
    from a2b_pipeline.files import read_json

    try:
        return read_json(os.path.join(root, STAMP), 1 << 20, "generator stamp")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CorpusError(f"{os.path.join(root, STAMP)}: unreadable ({e})") from None


def _differences(have: dict[str, Any], want: dict[str, Any]) -> str:
    keys = sorted(set(have) | set(want))
    return ", ".join(
        f"{k}: {have.get(k)!r} on disk, {want.get(k)!r} asked" for k in keys if have.get(k) != want.get(k)
    )


def check_stamp(root: str, ds: DatasetConfig, want: dict[str, Any]) -> None:
    """Refuse a corpus folder generated with other settings (naming both); the pipeline never rewrites it."""
    have = _read_stamp(root)
    if have is None or have.get("spec", have) == want:
        return
    by = f" for dataset {have['dataset']!r}" if "dataset" in have else ""
    raise SyntheticCorpusMismatch(
        f"{root} holds a synthetic corpus generated{by} with other settings than dataset {ds.name!r} asks "
        f"for ({_differences(have.get('spec', have), want)}). It is not rewritten: other experiments may "
        "read it. Give this dataset a `root` of its own, or make its `synthetic` settings match."
    )


def generate_whole(root: str, ds: DatasetConfig, spec: dict[str, Any]) -> None:
    """Write the corpus into a temporary sibling folder, then rename it to `root` (which must not exist or
    be empty). If another process renamed its copy first, ours is dropped and theirs is checked."""
    from a2b_pipeline.data.synthetic import write_synthetic_corpus

    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    try:
        write_synthetic_corpus(
            tmp,
            subjects=spec["subjects"],
            recordings_per_subject=spec["recordings_per_subject"],
            seconds=spec["seconds"],
            seed=spec["seed"],
            channels=spec["channels"],
            stimuli=spec.get("stimuli"),
        )
        stamp = {"spec": spec, "dataset": ds.name}
        with open(os.path.join(tmp, STAMP), "w") as f:
            json.dump(stamp, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the corpus is read by others (the UI, containers)
        if os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)  # an empty folder made beforehand
        try:
            os.rename(tmp, root)
        except OSError:
            if not os.path.exists(os.path.join(root, "manifest.csv")):
                raise
            # another process generated it first: theirs stands (if its settings are ours)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def list_synthetic(ds: SyntheticDataset, data: DataConfig) -> Listing:
    """Read `manifest` (or root/manifest.csv). When `root` holds no corpus yet, generate it there first;
    a corpus there made with other settings is refused (SyntheticCorpusMismatch), never rewritten."""
    # imported here: config validation imports this module, and this reader pulls in torch and soundfile
    from a2b_pipeline.data.manifest import read_manifest_listing

    manifest = manifest_path(ds)
    if ds.root and not ds.manifest:
        root = str(ds.root).rstrip("/")
        spec = generator_spec(ds, data)
        if not os.path.exists(manifest):
            if os.path.isdir(root) and os.listdir(root):
                raise CorpusError(
                    f"{root} is not empty but has no manifest.csv: not a complete synthetic corpus (an "
                    "interrupted write of an older version?); remove it to have it generated again"
                )
            generate_whole(root, ds, spec)
        check_stamp(root, ds, spec)
    return read_manifest_listing(
        manifest,
        ds.name,
        channels=data.channels,
        on_bad=data.on_bad_recording,
        allow_outside=data.allow_outside_paths,
        url_schemes=data.url_schemes,
    )


CORPUS = CorpusType(
    name="synthetic",
    sources=("root", "manifest"),
    list_recordings=list_synthetic,
    config=SyntheticDataset,
    source=manifest_path,
)


def folder_conflicts(configs: dict[str, Any]) -> list[str]:
    """`experiment -> RunConfig` (paths rebased alike): one line per generated-corpus folder that two of them
    describe differently (other generator settings or channels, or another corpus type in the same folder)."""
    seen: dict[str, tuple[str, str, Any]] = {}  # folder -> (experiment, dataset, description)
    problems = []
    for exp, cfg in sorted(configs.items()):
        for ds in cfg.data.datasets:
            if ds.type != "synthetic" or ds.manifest or not ds.root:
                continue
            folder = os.path.normpath(str(ds.root))
            described = generator_spec(ds, cfg.data)
            if folder not in seen:
                seen[folder] = (exp, ds.name, described)
            elif seen[folder][2] != described:
                first, name, other = seen[folder]
                problems.append(
                    f"{folder}: {first} (dataset {name}) generates it with {other}, "
                    f"{exp} (dataset {ds.name}) with {described}"
                )
    return problems
