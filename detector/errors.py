"""Exception types of hiddenstate; each message says what to do about it."""


class HiddenstateError(Exception):
    """Base class of every error hiddenstate raises on purpose."""


class ConfigError(HiddenstateError):
    """A setting is missing, malformed or out of range."""


class ModelError(HiddenstateError):
    """A model cannot be found, read, verified or used with this data."""


class InputFileError(HiddenstateError):
    """A file given to `replay` or `train` cannot be read as readings."""
