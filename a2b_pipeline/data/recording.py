"""What every corpus adapter produces: a list of recordings, and what it had to skip."""

from __future__ import annotations

from dataclasses import dataclass, field

from a2b_pipeline.security import redact_text


@dataclass(frozen=True)
class SignalSource:
    """Where one channel's values live: a column of a CSV (or .npz) file."""

    path: str  # local path or fsspec URL
    column: str  # column with the values
    time_column: str | None = "time"  # None: samples at a fixed `rate` Hz from t=0
    rate: float | None = None


@dataclass(frozen=True)
class Recording:
    """One listener hearing one audio file, with the biosignals recorded meanwhile."""

    dataset: str
    recording_id: str
    subject_id: str
    audio_path: str  # local path or fsspec URL
    signals: dict[str, SignalSource]  # config channel name -> source
    offset_seconds: float = 0.0  # the signal's t=0 is at this second of the audio
    duration_seconds: float | None = None  # usable length limit (e.g. HKU956 play_duration)
    row: int | None = None  # 1-based data row of the manifest/metadata, for messages
    source: str = ""  # manifest path or corpus root, for messages
    stimulus_id: str | None = None  # the song/clip heard; shared by its listeners (None: not known)

    def where(self) -> str:
        """A short locator for error messages: dataset, row, source."""
        row = f" row {self.row}" if self.row is not None else ""
        src = f" of {self.source}" if self.source else ""
        return f"dataset {self.dataset!r}{row}{src} (recording {self.recording_id!r})"


class BadRecordingError(ValueError):
    """A recording that can't be used. The message names the dataset, row and path (URLs without their
    credentials: this message is logged and recorded)."""

    def __init__(self, rec: Recording | None, path: str, reason: str):
        self.path = redact_text(str(path))
        self.reason = redact_text(str(reason))
        self.row = rec.row if rec else None
        self.dataset = rec.dataset if rec else ""
        where = redact_text(rec.where()) + ": " if rec else ""
        super().__init__(f"{where}{self.path}: {self.reason}")


@dataclass
class Skipped:
    """A record left out, and why: shown in logs, `a2b corpus` and Dagster metadata, so URLs are redacted."""

    path: str
    reason: str
    row: int | None = None
    dataset: str = ""

    def __post_init__(self) -> None:
        self.path = redact_text(str(self.path))
        self.reason = redact_text(str(self.reason))


@dataclass
class Listing:
    recordings: list[Recording] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
