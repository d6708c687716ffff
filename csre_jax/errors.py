"""The exceptions the command-line tools print as one 'error:' line instead of a traceback.

A `UserError` is a mistake in what the user gave (config, data, layout, paths, input files)
or in what the run meets (a full disk, a folder it may not write); its message names the
file or field and the fix. It subclasses ValueError, which such checks raised before. Any
other exception is a bug, and keeps its traceback.
"""


class UserError(ValueError):
    """A mistake the user can fix; str() says what, where and how."""


class Diverged(UserError, FloatingPointError):
    """Training produced a non-finite loss; str() names the step and what to change."""
