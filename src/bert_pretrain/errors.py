"""The one error type for bad user input (files, flags, configs).

The CLI prints an `InputError` as a one-line message and exits non-zero, without a traceback
(unless `--debug`). Everything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input from the user: the message names the file or option, the problem and the fix."""


class SettingsMismatch(InputError):
    """A readable file made with other settings than this run's (a shard's width, its vocab): every
    file of the set will fail alike, so it is never skipped as a damaged one. `problem` names what
    differs, `fix` how to make them agree from this side."""

    def __init__(self, path, problem: str, fix: str):
        super().__init__(f"{path}: {problem}; {fix}")
        self.path, self.problem, self.fix = path, problem, fix
