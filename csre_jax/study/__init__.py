"""Studies: the same comparison over seeds, with honest model selection and its statistics."""

from csre_jax.errors import UserError


class StudyError(UserError):
    """A study that cannot run as asked; the message names the flag or folder and the fix."""
