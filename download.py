"""Resumable, checksum-verified download of the network weights (standard library only).

The VGG19 file is 510 MB from a single university server, and a download that size often gets
cut off (a dropped connection, a sleeping laptop, Ctrl-C). Starting over each time wastes a lot of
time, so the bytes go to `<dest>.part`, the next call asks only for the rest with an HTTP Range
request, and only a whole file whose SHA-256 matches is renamed to `dest`. A truncated or corrupt
file never sits under the final name, where the loader would take it for the real one.
"""
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from errors import UserError
from progress import Bar

CHUNK = 1 << 20  # bytes per read and per hash update
TIMEOUT_S = 30  # per connect and per read, so a dead server cannot hang the run
MB = 1 << 20


def fetch(url, dest, sha256, progress=True, manual_hint=""):
    """Download url to dest, resuming a partial download, verifying sha256; returns Path(dest)."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _download(url, part, progress)
    except (OSError, http.client.HTTPException) as error:  # URLError and HTTPError are OSErrors
        raise UserError(_failure(url, error, part, manual_hint)) from None
    except KeyboardInterrupt:
        kept = part.stat().st_size if part.exists() else 0
        if kept:
            print(f"\nthe {kept / MB:.1f} MB received so far are kept in {part}; the same command "
                  f"resumes from there", file=sys.stderr)
        raise
    actual = file_sha256(part)
    if actual != sha256.lower():
        part.unlink()
        raise UserError(f"The file downloaded from {url} has SHA-256 {actual}, not the expected "
                        f"{sha256.lower()}, so it was deleted; {_retry(manual_hint)}.")
    os.replace(part, dest)
    return dest


def _download(url, part, progress):
    """Bring part up to the whole file: append the rest, or start over if the server ignores Range.

    A KeyboardInterrupt passes through; leaving the `with` closes (flushes) the part file for the
    next call to resume from.
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left past `have`: the checksum decides
            error.close()
            return
        raise
    with response, open(part, "ab" if response.status == 206 else "wb") as out:
        done = have if response.status == 206 else 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length else None
        bar = _Progress(total, done, sys.stderr) if progress else None
        try:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if bar:
                    bar.update(done)
        finally:
            if bar:
                bar.close()
    if total is not None and done < total:  # http.client returns b"" when a connection drops
        raise ConnectionError(f"the server closed the connection after {done / MB:.1f} of "
                              f"{total / MB:.1f} MB")


def file_sha256(path):
    """SHA-256 of a whole file, read in chunks (a resumed download is checked as one piece)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _failure(url, error, part, manual_hint):
    """One sentence: what failed and why, what is kept for resuming, and how else to get the file."""
    if isinstance(error, urllib.error.HTTPError):
        why = f"HTTP {error.code} {error.reason}"
    else:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        why = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    kept = part.stat().st_size if part.exists() else 0
    resume = (f"the {kept / MB:.1f} MB received so far are kept in {part} and the next try resumes "
              f"from there; " if kept else "")
    return f"Downloading {url} failed ({why}); {resume}{_retry(manual_hint)}."


def _retry(manual_hint):
    hint = manual_hint.strip().rstrip(".")
    return f"try again, or {hint}" if hint else "try again"


class _Progress:
    """The download's progress.Bar, counting megabytes; in a log, a kept line every 10% (every
    10 MB when the size is unknown) and the final count."""

    def __init__(self, total, done, stream=None):
        self.total, self.start, self.began = total, done, time.monotonic()
        self.bar = Bar(total / MB if total else None, "download", unit="MB", stream=stream, initial=done / MB)
        self.done = self.kept = done  # bytes now, and at the last kept line

    def update(self, done):
        self.done = done
        step = self.total / 10 if self.total else 10 * MB
        due = not self.bar.live and done // step > self.kept // step
        self.bar.update(done / MB, self._text(), keep=due)
        if due:
            self.kept = done

    def close(self):
        if not self.bar.live and self.done != self.kept:
            self.bar.keep(f"{self._text()}  {self.bar.timing()}")
        self.bar.close()

    def _text(self):
        done = self.done
        speed = (done - self.start) / MB / max(time.monotonic() - self.began, 1e-3)
        share = f"{100 * done / self.total:3.0f}%  {done / MB:.1f} / {self.total / MB:.1f} MB" if self.total \
            else f"{done / MB:.1f} MB"
        return f"{share}  {speed:.1f} MB/s"
