"""Writing files so that a crash, a full disk or Ctrl-C never costs a result.

Every file the project writes (images, JSON, .npz caches, model folders) goes through `write_atomic`:
the bytes go to a temporary name beside the target, which is renamed over it only when complete, so
a target is either the old file or the whole new one, never half of either. The files get the usual
permissions (0666 or 0777 less the umask), not the private 0600 of a temporary file.

A finished result whose final write fails (disk full, a read-only folder, a path under /proc) is not
lost: `write_result` tries a fallback name in the same folder, then the system's temporary folder,
and says where it went.
"""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from errors import UserError


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_beside(path, folder=False):
    parent = path.parent if str(path.parent) else Path(".")
    prefix = f".{path.name}."
    if folder:
        temporary = Path(tempfile.mkdtemp(prefix=prefix, suffix=".part", dir=parent))
        os.chmod(temporary, 0o777 & ~_umask())
        return temporary
    handle, temporary = tempfile.mkstemp(prefix=prefix, suffix=".part" + path.suffix, dir=parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; ours are ordinary files
    return Path(temporary)


def write_atomic(path, write, folder=False, keep_existing=False):
    """Call `write(temporary)` to fill a temporary file (or folder) beside `path`, then rename it to
    `path`, replacing what was there; with `keep_existing` a file already at `path` (or one that
    appears meanwhile) is kept and the next free name stem.1.ext, stem.2.ext, … is taken. Nothing
    is left behind when `write` or the rename fails. Returns the path written."""
    path = Path(path)
    temporary = _temporary_beside(path, folder)
    try:
        write(temporary)
        if folder:
            replace_folder(temporary, path)
        elif not keep_existing:
            os.replace(temporary, path)
        else:
            while True:
                path = free_name(path)
                try:
                    os.link(temporary, path)  # fails, atomically, where a file already is
                except FileExistsError:
                    continue
                except OSError:  # a file system without hard links: check, then rename
                    if path.exists():
                        continue
                    os.replace(temporary, path)
                break
            remove(temporary)
    except BaseException:
        remove(temporary)
        raise
    return path


def free_name(path):
    """`path` if nothing is there, else the first of stem.1.ext, stem.2.ext, … that is free."""
    path = Path(path)
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}.{number}{path.suffix}")
    return candidate


def replace_folder(source, target):
    """Move folder `source` to `target`: an existing `target` is set aside first and deleted only
    once `source` sits in its place (a folder cannot be renamed over a non-empty one)."""
    target = Path(target)
    aside = None
    if target.exists():
        aside = target.with_name(f".{target.name}.old.{os.getpid()}")
        remove(aside)
        os.replace(target, aside)
    try:
        os.replace(source, target)
    except BaseException:
        if aside is not None:
            os.replace(aside, target)
        raise
    if aside is not None:
        remove(aside)


def remove(path):
    """Delete a file or folder if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        try:
            path.unlink()
        except OSError:
            pass


def write_text(path, text):
    return write_atomic(path, lambda temporary: Path(temporary).write_text(text))


def write_json(path, value):
    return write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def write_result(path, write, what="result", keep_existing=False):
    """Write a finished result with `write_atomic`; if that fails with an OSError, write it to a
    fallback path (beside `path`, else in the temporary folder) and warn with both names.
    Returns (the path written, None) or (the fallback path, the reason the target failed). A
    UserError when even the fallbacks fail: the result is then lost, and the message says why."""
    path = Path(path)
    try:
        return write_atomic(path, write, keep_existing=keep_existing), None
    except OSError as error:
        reason = describe(error)
    tag = f"{path.stem}.unsaved-{os.getpid()}{path.suffix}"
    for folder in (path.parent, Path(tempfile.gettempdir())):
        fallback = folder / tag
        try:
            fallback = write_atomic(fallback, write, keep_existing=True)
        except OSError:
            continue
        print(f"warning: the {what} could not be written to {path} ({reason}); it is saved as "
              f"{fallback} instead", file=sys.stderr)
        return fallback, reason
    raise UserError(f"the {what} could not be written to {path} ({reason}), nor beside it nor to "
                    f"{tempfile.gettempdir()}: free some disk space and run again")


def describe(error):
    """An OSError in a few words: 'No space left on device', 'Permission denied'."""
    return error.strerror or str(error) or type(error).__name__


def check_folder(path, what="output"):
    """`path`'s folder exists and can be written: checked before a long run, not after it."""
    folder = Path(path).parent
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} folder {folder} is a file, not a folder; choose another path")
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{what} folder {folder} is not writable; choose a folder you can write to")


def check_new(path, overwrite, what="output", option="--overwrite"):
    """The one 'already exists' check: refuse to replace `path` unless `overwrite`."""
    if Path(path).exists() and not overwrite:
        raise UserError(f"{what} {path} already exists; pass {option} to replace it or choose another name")
