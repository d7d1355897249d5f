"""The errors that end a run with one line (the command lines print the message, no traceback).

Each carries the exit status the command lines end with, so a scheduler can tell them apart."""


class ConfigError(ValueError):
    """A config value that cannot work; the message names the value and what is allowed."""

    exit_code = 2


class CorruptArtifact(ConfigError):
    """A saved model or checkpoint that fails its sha256 or holds the wrong tensors; the message names the file."""


class NonFiniteError(RuntimeError):
    """Training or saving met a NaN or inf; the message names the phase, the step and the first layer holding one."""

    exit_code = 3


class Preempted(RuntimeError):
    """SIGTERM (a scheduler's pre-emption): the run saved what it could; re-running on the same dir continues it."""

    exit_code = 75  # EX_TEMPFAIL: "try again later"
