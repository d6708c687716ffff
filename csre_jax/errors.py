"""The exceptions the command-line tools print as one 'error:' line instead of a traceback,
and the boundary that prints them (`user_errors`).

A `UserError` is a mistake in what the user gave (config, data, layout, paths, input files)
or in what the run meets (a full disk, a folder it may not write); its message names the
file or field and the fix. It subclasses ValueError, which such checks raised before. Any
other exception is a bug, and keeps its traceback.
"""

import contextlib
import errno
import sys
import traceback
from collections.abc import Iterator


class UserError(ValueError):
    """A mistake the user can fix; str() says what, where and how."""


class Diverged(UserError, FloatingPointError):
    """Training produced a non-finite loss; str() names the step and what to change."""


# What an operating-system error means for a run, and what fixes it.
_OS_FIXES = {
    errno.ENOSPC: "no space left on the disk: free space there (or choose another folder) and "
    "run the same command again",
    errno.EDQUOT: "the disk quota is used up: free space (or choose another folder) and run the "
    "same command again",
    errno.EACCES: "permission denied: choose a path you may write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a path you may write to",
    errno.EROFS: "the file system is read-only: choose a folder on a writable disk",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
    errno.EISDIR: "a folder stands where a file is needed: name a file",
    errno.EEXIST: "a file of that name is in the way: choose another path",
    errno.ENOENT: "no such file or folder: check the path",
}


def describe_error(error: Exception) -> str:
    """A user error's message; an operating-system error as 'path: what it means, the fix'."""
    if isinstance(error, OSError) and error.errno is not None:
        what = _OS_FIXES.get(error.errno, f"{error.strerror}")
        where = error.filename or error.filename2
        return f"{where}: {what}" if where else what
    return str(error) or type(error).__name__


@contextlib.contextmanager
def user_errors(verbose: bool) -> Iterator[None]:
    """Turns a UserError or OSError raised inside into one 'error:' line on stderr and exit
    status 1 (the traceback first when verbose)."""
    try:
        yield
    except (UserError, OSError) as error:
        if verbose:
            traceback.print_exc()
        sys.stderr.write(f"error: {describe_error(error)}\n")
        raise SystemExit(1) from None
