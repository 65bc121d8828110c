"""The exception type users see: a clear message, a non-zero exit, nothing half-written."""


class AuglensError(Exception):
    """A problem with user input (config, name, file): says what is wrong and what is valid."""


class ConfigError(AuglensError):
    """An invalid config value; the message names the field path and the allowed values."""
