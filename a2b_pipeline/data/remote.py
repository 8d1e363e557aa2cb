"""Local paths and fsspec URLs (s3://, gs://, https://, file://) behind one small API.

Remote files are downloaded once into a local cache under ``<cache_dir>/remote``, keyed by URL + ETag
(or modification time) + size, and written atomically (a temporary file renamed into place), so a
second epoch or a second run reads the local copy and issues no GET for an unchanged object.

Credentials and endpoints come only from the standard chains of the storage libraries (for S3:
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role; ``AWS_ENDPOINT_URL``
for S3-compatible stores such as MinIO). Nothing here writes them anywhere; URLs are shown with any
``user:password@`` part removed.

Errors are :class:`RemoteError` (an ``OSError``) with a message that names the URL, the bucket and
the key: a missing bucket, a missing key, refused or absent credentials, an unreachable endpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from a2b_pipeline.files import atomic_path, open_regular
from a2b_pipeline.security import expand_secrets, redact, redact_text

__all__ = [
    "FileInfo",
    "RemoteAccessError",
    "RemoteError",
    "RemoteNotFoundError",
    "default_cache_dir",
    "exists",
    "fetch",
    "file_info",
    "has_scheme",
    "is_url",
    "join",
    "list_tree",
    "open_binary",
    "read_bytes",
    "read_text",
    "redact",
    "to_local_path",
]


class RemoteError(OSError):
    """A remote file that can't be read; the message names the URL, bucket and key."""

    def __init__(self, message: str, url: str = ""):
        super().__init__(redact_text(message))  # a storage library's own text may repeat the URL
        self.url = url

    def __str__(self) -> str:  # OSError's default str shows the args tuple when given several
        return str(self.args[0]) if self.args else ""


class RemoteNotFoundError(RemoteError, FileNotFoundError):
    """The bucket or the key (or the local file) does not exist."""


class RemoteAccessError(RemoteError, PermissionError):
    """Credentials are missing or were refused."""


@dataclass(frozen=True)
class FileInfo:
    """What identifies one version of a file: its size and an ETag (remote) or mtime (local)."""

    size: int
    version: str  # ETag for object stores, "mtime:<ns>" for local files, "" when unknown

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "version": self.version}


# ---- paths and URLs ----


def has_scheme(path: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...``, ``file://`` included: a path written as a URL, kept as written."""
    return "://" in os.fspath(path)


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` other than ``file://`` (which is a local path): a file fetched through the
    download cache."""
    s = os.fspath(path)
    return has_scheme(s) and s.split("://", 1)[0].lower() not in ("file", "local")


def to_local_path(path: str | os.PathLike[str]) -> str:
    """``file:///x`` -> ``/x``; other local paths unchanged. URLs are returned as they are."""
    s = os.fspath(path)
    low = s.lower()
    for prefix in ("file://", "local://"):
        if low.startswith(prefix):
            return unquote(s[len(prefix) :])
    return s


def join(root: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts under a directory or a URL (``s3://b/p`` + ``x/y.csv`` -> ``s3://b/p/x/y.csv``)."""
    s = os.fspath(root)
    if is_url(s):
        out = s.rstrip("/")
        for p in parts:
            out = out + "/" + p.strip("/")
        return out
    return str(Path(to_local_path(s), *parts))


def _bucket_key(url: str) -> tuple[str, str]:
    sp = urlsplit(url)
    return sp.netloc, sp.path.lstrip("/")


def default_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``data.cache_dir`` when set, else ``$A2B_CACHE_DIR``, else ``~/.cache/a2b``."""
    if cache_dir:
        return Path(to_local_path(os.fspath(cache_dir))).expanduser()
    env = os.environ.get("A2B_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "a2b"


# ---- filesystems ----

log = logging.getLogger(__name__)
_FS_LOCK = threading.Lock()
_FS: dict[tuple, Any] = {}
# url -> FileInfo learned from the most recent listing in this process (saves a HEAD per file)
_KNOWN: dict[str, FileInfo] = {}


def _filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URL; one instance per protocol, endpoint and process."""
    try:
        import fsspec
        from fsspec.core import split_protocol
    except ImportError as e:  # pragma: no cover - fsspec is a dependency
        raise RemoteError(f"{redact(url)}: reading URLs needs fsspec ({e})", url) from None
    protocol, _ = split_protocol(url)
    protocol = protocol or "file"
    key = (
        protocol,
        os.getpid(),
        os.environ.get("AWS_ENDPOINT_URL"),
        os.environ.get("AWS_ENDPOINT_URL_S3"),
        os.environ.get("AWS_PROFILE"),
        # a change of credentials in the environment needs a new client; only a hash is kept, in memory
        hash(
            tuple(
                os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
            )
        ),
    )
    with _FS_LOCK:
        fs = _FS.get(key)
        if fs is None:
            try:
                cls = fsspec.get_filesystem_class(protocol)
            except (ImportError, ValueError) as e:
                raise RemoteError(f"{redact(url)}: no filesystem for {protocol!r} URLs ({e})", url) from None
            # our own instance: credentials and endpoint are resolved by the library's standard chain
            fs = cls(skip_instance_cache=True)
            _FS[key] = fs
    try:  # a `${VAR}` credential reference is filled in here, never stored or shown
        return fs, fs._strip_protocol(expand_secrets(url))
    except KeyError as e:
        raise RemoteAccessError(str(e.args[0]), url) from None


def _etag(info: dict[str, Any]) -> str:
    for k in ("ETag", "etag", "md5Hash", "md5", "crc32c", "generation", "LastModified", "mtime", "updated"):
        v = info.get(k)
        if v not in (None, ""):
            return str(v).strip('"')
    return ""


def _info_from(d: dict[str, Any]) -> FileInfo:
    size = d.get("size", d.get("Size"))
    return FileInfo(size=int(size) if size is not None else -1, version=_etag(d))


def _translate(exc: BaseException, url: str) -> RemoteError:
    """A storage library's exception -> RemoteError naming the URL, bucket and key."""
    shown = redact(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    bucket, key = _bucket_key(url) if scheme in ("s3", "s3a", "gs", "gcs", "az", "abfs") else ("", "")
    text = str(exc) or type(exc).__name__
    low = text.replace(url, "").lower()  # the URL's own words ("Signature=...") say nothing about the error
    name = type(exc).__name__
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    where = f" at endpoint {endpoint}" if endpoint and scheme.startswith("s3") else ""
    if isinstance(exc, RemoteError):
        return exc
    cause = exc.__cause__
    if isinstance(exc, FileNotFoundError) and cause is not None and not isinstance(cause, FileNotFoundError):
        # fsspec's HTTP filesystem reports every failure as FileNotFoundError: say what it was
        status, reason = getattr(cause, "status", None), getattr(cause, "message", "")
        if status in (401, 403, 407):
            return RemoteAccessError(f"{shown}: access refused (HTTP {status} {reason})", url)
        if isinstance(status, int) and status not in (404, 410):
            return RemoteError(f"{shown}: the server answered HTTP {status} {reason}", url)
        if status is None:
            return _translate(cause, url)
    if "nosuchbucket" in low.replace(" ", "") or "bucket does not exist" in low:
        return RemoteNotFoundError(f"{shown}: bucket {bucket!r} does not exist{where}", url)
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return RemoteAccessError(
            f"{shown}: no usable credentials for bucket {bucket!r} ({text}); set them through the standard "
            "AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role)",
            url,
        )
    if isinstance(exc, PermissionError) or any(
        s in low for s in ("accessdenied", "access denied", "forbidden", "invalidaccesskeyid", "signature")
    ):
        what = f"bucket {bucket!r}, key {key!r}" if bucket else "the server"
        return RemoteAccessError(
            f"{shown}: access refused ({what}): {text}; check the credentials of the standard AWS chain "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance role)",
            url,
        )
    if isinstance(exc, FileNotFoundError):
        if bucket:
            return RemoteNotFoundError(
                f"{shown}: no such object (key {key!r} in bucket {bucket!r}){where}", url
            )
        return RemoteNotFoundError(f"{shown}: no such file", url)
    if isinstance(exc, ConnectionError) or name in (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ClientConnectorError",
        "ClientConnectorDNSError",
        "ServerDisconnectedError",
        "ConnectionError",
    ):
        return RemoteError(f"{shown}: cannot reach the storage endpoint{where}: {text}", url)
    return RemoteError(f"{shown}: {name}: {text}", url)


@contextmanager
def _errors(url: str) -> Iterator[None]:
    try:
        yield
    except RemoteError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise _translate(e, url) from None
    except Exception as e:  # botocore / aiohttp errors that are not OSError
        raise _translate(e, url) from None


# ---- queries ----


def file_info(path: str | os.PathLike[str], *, refresh: bool = False) -> FileInfo:
    """Size and version (ETag or mtime) of a file; remote info comes from the last listing when known."""
    s = os.fspath(path)
    if not is_url(s):
        local = to_local_path(s)
        try:
            st = os.stat(local)
        except FileNotFoundError:
            raise RemoteNotFoundError(f"{local}: no such file", local) from None
        return FileInfo(size=st.st_size, version=f"mtime:{st.st_mtime_ns}")
    if not refresh and s in _KNOWN:
        return _KNOWN[s]
    fs, rpath = _filesystem(s)
    with _errors(s):
        d = fs.info(rpath)
    if d.get("type") == "directory":
        raise RemoteNotFoundError(f"{redact(s)}: is a directory, expected a file", s)
    info = _info_from(d)
    _KNOWN[s] = info
    return info


def exists(path: str | os.PathLike[str]) -> bool:
    """True when the file or directory exists; a missing bucket or refused credentials still raise."""
    s = os.fspath(path)
    if not is_url(s):
        return os.path.exists(to_local_path(s))
    if s in _KNOWN:
        return True
    fs, rpath = _filesystem(s)
    try:
        with _errors(s):
            fs.info(rpath)
        return True
    except RemoteNotFoundError as e:
        if "does not exist" in str(e):  # the bucket itself is missing: say so
            raise
        return False


def list_tree(root: str | os.PathLike[str], *, confine: bool = True) -> dict[str, FileInfo]:
    """Every file under ``root``: relative POSIX path -> FileInfo. One recursive listing for URLs.

    A corpus is data from elsewhere: with `confine`, a local file that is a symlink leading out of the root
    is left out (as if missing), so a corpus can't make the pipeline read /etc/passwd by linking to it.
    Raises RemoteNotFoundError when the root (directory, bucket or prefix) does not exist.
    """
    s = os.fspath(root)
    out: dict[str, FileInfo] = {}
    if not is_url(s):
        local = Path(to_local_path(s))
        if not local.is_dir():
            raise RemoteNotFoundError(f"{local}: no such directory", str(local))
        real_root = os.path.realpath(local)
        for dirpath, dirnames, filenames in os.walk(local):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                p = Path(dirpath) / fn
                if confine and p.is_symlink() and not _inside(os.path.realpath(p), real_root):
                    log.warning("%s: a symlink out of the corpus root %s, left out", p, local)
                    continue
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                out[p.relative_to(local).as_posix()] = FileInfo(st.st_size, f"mtime:{st.st_mtime_ns}")
        return out
    fs, rpath = _filesystem(s)
    rpath = rpath.rstrip("/")
    with _errors(s):
        fs.invalidate_cache(rpath)
        found = fs.find(rpath, detail=True)
    base = s.rstrip("/")
    for stale in [k for k in _KNOWN if k.startswith(base + "/")]:  # deleted upstream since the last listing
        del _KNOWN[stale]
    for name, d in sorted(found.items()):
        if d.get("type") == "directory":
            continue
        rel = name[len(rpath) :].lstrip("/") if name.startswith(rpath) else name
        if not rel:
            continue
        info = _info_from(d)
        out[rel] = info
        _KNOWN[base + "/" + rel] = info
    if not out:
        with _errors(s):
            is_dir = fs.isdir(rpath)
        if not is_dir:
            bucket, key = _bucket_key(s)
            raise RemoteNotFoundError(
                f"{redact(s)}: nothing under key prefix {key!r} in bucket {bucket!r}", s
            )
    return out


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


# ---- reading ----


def _cache_path(url: str, info: FileInfo, cache_dir: str | os.PathLike[str] | None) -> Path:
    url_hash = hashlib.sha256(url.encode()).hexdigest()
    ver_hash = hashlib.sha256(f"{info.version}\n{info.size}".encode()).hexdigest()[:24]
    name = Path(urlsplit(url).path).name or "file"
    name = unquote(name)
    return default_cache_dir(cache_dir) / "remote" / url_hash[:2] / url_hash[:40] / ver_hash / name


def fetch(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> str:
    """A local path with the file's content: the path itself when local, else the cached download.

    A cached copy is reused when URL, version (ETag) and size match; otherwise the object is downloaded
    to a temporary file beside the target, checked for size, fsynced and renamed into place. Older
    cached versions of the same URL are removed.
    """
    s = os.fspath(path)
    if not is_url(s):
        local = to_local_path(s)
        if not os.path.exists(local):
            raise RemoteNotFoundError(f"{local}: no such file", local)
        return local
    info = file_info(s)
    dest = _cache_path(s, info, cache_dir)
    if _cached(dest, info):
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # one download per file: threads wait on a lock, processes (workers, ranks, parallel runs) on a file lock
    with _download_lock(str(dest)), _file_lock(dest.parent / ".lock"):
        if _cached(dest, info):
            return str(dest)
        _download(s, info, dest)
    # drop older versions of this URL (best effort; open files stay readable on POSIX)
    for sib in dest.parent.parent.iterdir():
        if sib != dest.parent and sib.is_dir():
            shutil.rmtree(sib, ignore_errors=True)
    return str(dest)


def _cached(dest: Path, info: FileInfo) -> bool:
    try:
        hit = dest.stat().st_size == info.size or info.size < 0
    except FileNotFoundError:
        return False
    if hit:
        touch(dest)
    return hit


def touch(path: str | os.PathLike[str]) -> None:
    """Mark a cache entry used (its mtime) for least-recently-used pruning (cache_admin); best effort."""
    with contextlib.suppress(OSError):
        os.utime(path)


class KeyedLocks:
    """One lock per key, so threads working on the same file or entry wait for one another only."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def __call__(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


_download_lock = KeyedLocks()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: the atomic rename alone keeps the cache consistent
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _download(s: str, info: FileInfo, dest: Path) -> None:
    """Download to a temporary file beside `dest`, check the size, fsync, rename into place (atomic_path)."""
    fs, rpath = _filesystem(s)
    with atomic_path(dest) as tmp:
        with _errors(s):
            fs.get_file(rpath, str(tmp))
        got = tmp.stat().st_size
        if info.size >= 0 and got != info.size:
            raise RemoteError(
                f"{redact(s)}: downloaded {got} bytes, expected {info.size} (changed during the download?)",
                s,
            )


def open_binary(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> IO[bytes]:
    """Open for reading in binary mode (remote files through the download cache): regular files only."""
    return open_regular(fetch(path, cache_dir), follow_symlinks=not is_url(path))


def read_bytes(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> bytes:
    with open_binary(path, cache_dir) as f:
        return f.read()


def read_text(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> str:
    """Text of a file; a UTF-8 BOM is dropped, undecodable bytes fall back to latin-1."""
    data = read_bytes(path, cache_dir)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def forget_listings() -> None:
    """Drop what listings taught this process (tests; a long-lived process that wants fresh HEADs)."""
    _KNOWN.clear()
    with _FS_LOCK:
        for fs in _FS.values():
            with contextlib.suppress(Exception):  # best effort
                fs.invalidate_cache()
