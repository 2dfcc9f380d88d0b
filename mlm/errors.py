"""Errors a user can fix, told in one line instead of a traceback.

`UserError` is bad input (a flag, a path, a sentence): raised anywhere, printed or shown as its message alone.
`one_line_error` words the failures of the machine a user can still fix (a corpus that is not UTF-8, a full or
read-only disk). The trainer prints both as `error: ...` (which the app shows); the app uses the same wording."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: reported as one line, never as a traceback."""

DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}  # full, read-only, not ours
OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # how safetensors' writer (Rust) reports one


def caused_by(error: BaseException, kind: type) -> BaseException | None:
    """`error` or the first of its causes that is a `kind`."""
    while error is not None and not isinstance(error, kind):
        error = error.__cause__ or error.__context__
    return error


def one_line_error(error: Exception) -> str | None:
    """What the user can fix (a corpus that is not UTF-8, a full or read-only disk) in one line; None otherwise."""
    undecodable = caused_by(error, UnicodeDecodeError)
    if undecodable is not None:  # it arrives wrapped in the datasets library's own errors
        return (f"a text file is not UTF-8 text (byte {undecodable.object[undecodable.start]:#x} at position "
                f"{undecodable.start}): save it as UTF-8 plain text")
    disk = caused_by(error, OSError)
    if disk is not None and disk.errno in DISK_ERRORS:
        return (f"cannot write {Path(disk.filename or '').name or 'the run folder'}: {disk.strerror} (free some "
                f"space or choose another --output-dir)")
    written = OS_ERROR_IN_TEXT.search(str(error))
    if written and int(written.group(1)) in DISK_ERRORS:
        return (f"cannot write the checkpoint: {os.strerror(int(written.group(1)))} (free some space or choose "
                f"another --output-dir)")
    return None
