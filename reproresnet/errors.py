"""The one exception every setting check raises; its own module so that config, recipes and
the command line can share it without importing each other."""


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and what would be accepted."""
