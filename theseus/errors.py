"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: the message names the problem and, where possible, the fix."""


class ConfigError(UserError):
    """A configuration that does not fit the job's schema."""
