"""The one exception type users see: a clear message, a non-zero exit, nothing half-written."""


class AuglensError(Exception):
    """A problem with the user's input (config, name, file); the message says what and what is valid."""


class ConfigError(AuglensError):
    """An invalid experiment/config value; the message names the field path and the allowed values."""
