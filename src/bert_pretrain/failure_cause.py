"""A worker's cause of failure, left where torchrun's agent reads it.

torchrun gives each worker a file to describe why it failed (TORCHELASTIC_ERROR_FILE; its `record`
decorator writes it for an uncaught exception). Our workers end bad input with one line and exit
code 2 instead of an exception, so they write that line there themselves: once a restart budget is
spent, the launcher (launch.py) names the cause of the last failure from it, not only an exit code.
A worker that only lost contact with a failed peer writes nothing: it is not the cause.
"""

from __future__ import annotations

import json
import os
import time

ERROR_FILE_VARIABLE = "TORCHELASTIC_ERROR_FILE"


def record_failure_cause(message: str) -> None:
    """Write `message` as this worker's cause of failure (nothing outside torchrun)."""
    path = os.environ.get(ERROR_FILE_VARIABLE)
    if not path:
        return
    try:  # torchrun's own format (ProcessFailure reads "message" and "timestamp")
        with open(path, "w", encoding="utf-8") as file:
            json.dump({"message": message, "timestamp": int(time.time())}, file)
    except OSError:  # the cause is still on stderr; the launcher then names the exit code only
        pass
