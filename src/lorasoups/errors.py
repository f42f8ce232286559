"""Exception types. Every message names the file (or object) and the problem."""


class LorasoupsError(Exception):
    """Base class of all errors raised on purpose by lorasoups."""


class AdapterError(LorasoupsError, ValueError):
    """A LoRA adapter folder is missing, unreadable, inconsistent or unsupported."""


class ModelError(LorasoupsError):
    """A base model cannot be found, prepared or loaded."""


class DataError(LorasoupsError, ValueError):
    """A dataset file is missing, malformed or unusable."""


class ConfigError(LorasoupsError, ValueError):
    """An experiment config or option is invalid. ``problems`` lists every problem found."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]
