"""The one error type for bad user input (files, flags, configs).

The CLI prints an `InputError` as a one-line message and exits non-zero, without a traceback
(unless `--debug`). Everything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input from the user: the message names the file or option, the problem and the fix."""
