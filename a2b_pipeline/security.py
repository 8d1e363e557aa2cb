"""What a run may reach and what it may show (torch-free: the Dagster definitions and the light CLI commands
import it).

- The grant: a checkpoint carries the config it was trained with, but a checkpoint from elsewhere is not
  the config's author. What it may reach is at most what the current invocation allows: the config file
  given on the command line, or the environment (A2B_URL_SCHEMES, A2B_ALLOW_OUTSIDE_PATHS) for commands
  that take none (`a2b evaluate`, `predict`, `resume`).
- Redaction: every URL shown (messages, logs, records, metadata) loses its credentials, by one rule.
- Secrets in configs: a config (persisted in every checkpoint, Dagster record and wandb run) never holds a
  credential. A URL names one as `${ENV_VAR}`, which is filled in from the environment only when the file
  is opened (expand_secrets), so what is written is the reference, never the value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

REDACTED = "REDACTED"

# `scheme://<userinfo>@`: everything up to the last `@` before the path, a `user:password` with `/`, `?`, `#`
# or spaces in the password included (a malformed userinfo must not leave half a password shown).
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?:[^/\s?#'\"<>]*@|[^/\s'\"<>@]*:[^\s'\"<>@]*@)"
)
# Parameters (after `?`, `&`, `;` or `#`) whose name says credential: tokens, secrets, passwords, keys,
# signatures and the rest of presigned URLs (X-Amz-*, X-Goog-*, AWSAccessKeyId, Policy, Signature, sig).
_SECRET_NAME = (
    r"[A-Za-z0-9_.\-]*(?:token|secret|passw|pass|pwd|sig|key|auth|credential|session|policy|cookie|code)"
    r"[A-Za-z0-9_.\-]*|x-(?:amz|goog|ms)-[A-Za-z0-9_.\-]+|sv|se|sp|st|sr|skoid|sktid"
)
_SECRET_PARAM = re.compile(rf"(?P<name>[?&;#](?:{_SECRET_NAME})=)[^&;#\s'\"<>]*", re.IGNORECASE)
_ENV_REF = re.compile(r"\$\{(?P<var>[A-Za-z_][A-Za-z0-9_]*)\}")


def redact_text(text: str) -> str:
    """Every URL in `text` without its credentials: the userinfo dropped, credential parameters replaced."""
    if "://" not in text:
        return text
    text = _USERINFO.sub(lambda m: m.group("scheme"), text)
    return _SECRET_PARAM.sub(lambda m: m.group("name") + REDACTED, text)


def redact(url: str) -> str:
    """A URL (or any text) as it may be shown: see redact_text."""
    return redact_text(str(url))


def literal_secret(value: str) -> bool:
    """True when a URL carries a credential written out, not as a `${ENV_VAR}` reference."""
    masked = _ENV_REF.sub(REDACTED, value)
    for m in _USERINFO.finditer(masked):
        userinfo = m.group(0)[len(m.group("scheme")) : -1]
        if userinfo.replace(REDACTED, "").strip(":"):
            return True
    return _SECRET_PARAM.sub(lambda m: m.group("name") + REDACTED, masked) != masked


def expand_secrets(url: str) -> str:
    """`${VAR}` references in a URL filled in from the environment, at the moment it is opened."""

    def value(m: re.Match[str]) -> str:
        var = m.group("var")
        if var not in os.environ:
            raise KeyError(f"{redact(url)}: names ${{{var}}}, which is not set in the environment")
        return os.environ[var]

    return _ENV_REF.sub(value, url)


# ---- the grant ----

ENV_URL_SCHEMES = "A2B_URL_SCHEMES"
ENV_ALLOW_OUTSIDE = "A2B_ALLOW_OUTSIDE_PATHS"


@dataclass(frozen=True)
class Grant:
    """What the current invocation allows a run's config to reach (see the module's docstring)."""

    source: str  # who grants it, for messages
    url_schemes: frozenset[str]
    allow_outside_paths: bool
    locations: frozenset[str]  # manifests and roots the granting config names itself

    @classmethod
    def from_config(cls, cfg: Any, source: str) -> Grant:
        data = cfg.data
        return cls(
            source=f"the config {source}",
            url_schemes=frozenset(data.url_schemes),
            allow_outside_paths=data.allow_outside_paths,
            locations=frozenset(_locations(cfg)),
        )

    @classmethod
    def from_env(cls) -> Grant:
        schemes = os.environ.get(ENV_URL_SCHEMES, "")
        return cls(
            source=f"this environment ({ENV_URL_SCHEMES}, {ENV_ALLOW_OUTSIDE})",
            url_schemes=frozenset(s.strip().lower() for s in schemes.split(",") if s.strip()),
            allow_outside_paths=os.environ.get(ENV_ALLOW_OUTSIDE, "").lower() in ("1", "true", "yes"),
            locations=frozenset(),
        )

    def refusals(self, cfg: Any) -> list[str]:
        """`field: why` for each thing `cfg` asks for beyond this grant."""
        data, out = cfg.data, []
        for scheme in data.url_schemes:
            if scheme not in self.url_schemes:
                out.append(f"data.url_schemes: {scheme!r} is not granted by {self.source}")
        if data.allow_outside_paths and not self.allow_outside_paths:
            out.append(f"data.allow_outside_paths: true is not granted by {self.source}")
        for field, location in _locations(cfg).items():
            scheme = location.split("://", 1)[0].lower() if "://" in location else ""
            if scheme in ("", "file", "local") or location in self.locations or scheme in self.url_schemes:
                continue
            out.append(f"{field}: {redact(location)} (a {scheme} URL) is not granted by {self.source}")
        return out


class GrantError(ValueError):
    """A checkpoint's config asks for more than the invocation allows (exit 2, like a bad config)."""


def check_grant(cfg: Any, grant: Grant, what: str) -> None:
    """Refuse `cfg` (the config `what` carries: a checkpoint) where it reaches beyond `grant`, naming the
    fields; nothing is read or fetched for it before this passes."""
    refused = grant.refusals(cfg)
    if refused:
        raise GrantError(
            "\n".join(
                [
                    f"{what}: its config asks for more than {grant.source} allows; refused:",
                    *(f"  {r}" for r in refused),
                    f"  (a checkpoint is data, not authority: give a config that allows it, or set "
                    f"{ENV_URL_SCHEMES} / {ENV_ALLOW_OUTSIDE} for commands without one)",
                ]
            )
        )


def _locations(cfg: Any) -> dict[str, str]:
    """`data.datasets.<i>.<field>` -> every manifest, root or other location a config's datasets name."""
    found = {}
    for i, ds in enumerate(cfg.data.datasets):
        for name, value in ds:
            if isinstance(value, str) and "://" in value:
                found[f"data.datasets.{i}.{name}"] = value
    return found
