"""Fetching the video of a ``video_url`` content part, with the server's media policy.

Accepted URLs (as vLLM accepts them):

- ``data:video/<subtype>;base64,<payload>`` — always;
- ``file:///abs/path`` — only when the server was given ``allowed_local_media_path`` and the file,
  after resolving symlinks and ``..``, lies inside that folder;
- ``http://`` / ``https://`` — only when the server was started with ``allow_remote_media``.

Every other scheme, and everything outside the policy, is refused with a :class:`MediaError`
whose ``status`` is the HTTP status to answer (400, 403 or 413) and whose message names the problem
without revealing the server's files.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import urllib.parse
from dataclasses import dataclass

__all__ = ["MediaError", "MediaPolicy", "Media", "fetch_media"]


class MediaError(ValueError):
    """A video that cannot be used; ``status`` is the HTTP status, ``code`` the OpenAI error code."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_video"):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class MediaPolicy:
    max_video_bytes: int = 64 * 2**20
    allowed_local_media_path: str | None = None
    allow_remote_media: bool = False
    remote_timeout_s: float = 30.0


@dataclass
class Media:
    """A fetched video: its bytes (``data``) or a local ``path``, and the SHA-256 of the content."""

    sha256: str
    size: int
    data: bytes | None = None
    path: str | None = None


def _hash_file(path: str, limit: int) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += len(block)
            if n > limit:
                raise MediaError(f"video_url: the file is larger than the server's video limit ({limit} bytes)",
                                 status=413, code="video_too_large")
            h.update(block)
    return h.hexdigest(), n


def _data_url(url: str, limit: int) -> Media:
    head, sep, payload = url[5:].partition(",")
    if not sep:
        raise MediaError("video_url: a data URL needs a ',' before its payload (data:video/mp4;base64,...)")
    parts = head.split(";")
    mime = parts[0].strip().lower()
    if mime and not (mime.startswith("video/") or mime == "application/octet-stream"):
        raise MediaError(f"video_url: data URL media type must be video/*, got {mime!r}")
    if "base64" not in [p.strip().lower() for p in parts[1:]]:
        raise MediaError("video_url: data URL must be base64-encoded (data:video/mp4;base64,...)")
    if len(payload) * 3 // 4 > limit + 3:
        raise MediaError(f"video_url: the video is larger than the server's video limit ({limit} bytes)",
                         status=413, code="video_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("video_url: data URL payload is not valid base64") from None
    if not data:
        raise MediaError("video_url: data URL payload is empty")
    if len(data) > limit:
        raise MediaError(f"video_url: the video is larger than the server's video limit ({limit} bytes)",
                         status=413, code="video_too_large")
    return Media(hashlib.sha256(data).hexdigest(), len(data), data=data)


def _file_url(url: str, policy: MediaPolicy) -> Media:
    if not policy.allowed_local_media_path:
        raise MediaError("video_url: file:// URLs are disabled on this server (start it with "
                         "--allowed-local-media-path DIR to allow files inside DIR)", status=403, code="forbidden_media")
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise MediaError(f"video_url: file:// URL must name a local path, got host {parsed.netloc!r}")
    path = urllib.parse.unquote(parsed.path)
    root = os.path.realpath(policy.allowed_local_media_path)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise MediaError("video_url: file:// path is outside the allowed media folder", status=403,
                         code="forbidden_media")
    if not os.path.isfile(real):
        raise MediaError("video_url: no such video file in the allowed media folder")
    sha, size = _hash_file(real, policy.max_video_bytes)
    return Media(sha, size, path=real)


def _remote_url(url: str, policy: MediaPolicy) -> Media:
    if not policy.allow_remote_media:
        raise MediaError("video_url: http(s) URLs are disabled on this server (start it with --allow-remote-media)",
                         status=403, code="forbidden_media")
    import httpx  # noqa: PLC0415

    limit = policy.max_video_bytes
    try:
        with httpx.stream("GET", url, timeout=policy.remote_timeout_s, follow_redirects=True) as resp:
            if resp.status_code != 200:
                raise MediaError(f"video_url: fetching the URL gave HTTP {resp.status_code}")
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise MediaError(f"video_url: the video is larger than the server's video limit ({limit} bytes)",
                                 status=413, code="video_too_large")
            chunks, n = [], 0
            for chunk in resp.iter_bytes():
                n += len(chunk)
                if n > limit:
                    raise MediaError(f"video_url: the video is larger than the server's video limit ({limit} bytes)",
                                     status=413, code="video_too_large")
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise MediaError(f"video_url: could not fetch the URL ({type(exc).__name__})") from None
    data = b"".join(chunks)
    if not data:
        raise MediaError("video_url: the URL returned no data")
    return Media(hashlib.sha256(data).hexdigest(), len(data), data=data)


def fetch_media(url, policy: MediaPolicy) -> Media:
    """Resolve ``url`` (a ``video_url.url`` string) under ``policy``; raises :class:`MediaError`."""
    if not isinstance(url, str) or not url:
        raise MediaError(f"video_url.url must be a non-empty string, got {type(url).__name__}")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _data_url(url, policy.max_video_bytes)
    if scheme == "file":
        return _file_url(url, policy)
    if scheme in ("http", "https"):
        return _remote_url(url, policy)
    shown = url if len(url) <= 40 else url[:40] + "..."
    raise MediaError(f"video_url: unsupported URL {shown!r}; use a data:video/...;base64 URL, "
                     "file:// (inside --allowed-local-media-path) or http(s) (with --allow-remote-media)")
