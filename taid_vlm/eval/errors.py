"""The one error type of the evaluation harness.

A run that cannot be scored honestly (wrong task for the file, a model that cannot generate)
must stop with a message that names the file, field or model and says what to do; the CLI
prints it without a traceback. Data rows that are broken raise the data layer's ``DataError``,
which already names the file and line.
"""

from __future__ import annotations

from ..errors import UserError


class EvalError(UserError):
    """An evaluation that cannot run as asked; the message names what is wrong and the fix."""
