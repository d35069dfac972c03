"""Errors a user can cause. The CLI prints their message as one line and exits with code 2."""

from __future__ import annotations

from optimizers import OptimizerError
from tasks import TaskError


class UserError(ValueError):
    """A mistake the user can fix; the message names the fix."""


#: Every exception type whose message is meant for the user as it stands.
USER_ERRORS: tuple[type[Exception], ...] = (UserError, TaskError, OptimizerError)
