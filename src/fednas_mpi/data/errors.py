"""The one exception type of the data layer."""


class DataError(ValueError):
    """Missing, corrupt or unusable data; the message names the files and the fix."""
