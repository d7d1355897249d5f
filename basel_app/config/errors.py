"""The one error type a bad setting raises, wherever it is found; the command lines print it as one line."""


class ConfigError(ValueError):
    """A config value that cannot work; the message names the value and what is allowed."""
