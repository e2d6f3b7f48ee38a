"""Errors that end the daemon with a clear line instead of a traceback."""

EX_CONFIG = 78  # sysexits.h: configuration error; the systemd units do not restart on it
EX_SOFTWARE = 70  # a component crashed
EX_IOERR = 74  # the journal or a replay file cannot be read or written (a full disk)
EX_UNAVAILABLE = 69  # a broker could not be reached at start-up (systemd retries)


class ConfigError(Exception):
    """A setting is invalid; ``setting`` names it the way the operator writes it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message
