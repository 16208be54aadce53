"""One small error hierarchy: every error carries a message for the user and a hint for the fix.

The Processing algorithm turns these into QgsProcessingException; the CLI prints them.
"""

from __future__ import annotations


class FloodMapperError(Exception):
    """Base error. `message` says what went wrong, `hint` how to fix it (may be empty).

    `transient`: the server went away or is restarting (refused, reset, 502/503/504, its engine stopped):
    the same request may succeed once it answers again, so a long job waits for it rather than failing.
    """

    transient = False

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip() if self.hint else self.message


class InputError(FloodMapperError):
    """The input raster or a parameter cannot be used."""


class NothingToMap(InputError):
    """The area asked for (an extent, mask polygons) does not overlap the raster: there is nothing of it to map."""


class MissingBands(InputError):
    """The raster lacks a band the model takes: too few bands, or none named as one of the model's."""


class OutputError(FloodMapperError):
    """The output cannot be written where asked."""


class ServerError(FloodMapperError):
    """The server answered with an error, or with something that is not a valid answer."""

    def __init__(self, message: str, hint: str = "", status: int | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


class EngineDied(ServerError):
    """The server answered that its engine stopped: every later request fails until it is restarted."""

    transient = True  # vLLM answers this to the requests in flight while it shuts down too


class ConnectionFailed(FloodMapperError):
    """The server could not be reached (refused, DNS, TLS, timeout)."""


class TransportUnsupported(FloodMapperError):
    """The server (or the layer) cannot do the transport that was asked for."""


class ModelSpecError(FloodMapperError):
    """A model config.json lacks or contradicts what is needed."""


class EngineError(FloodMapperError):
    """The local vLLM engine could not be started, or died."""


class Cancelled(FloodMapperError):
    """The user cancelled; nothing was left behind."""

    def __init__(self, message: str = "Cancelled by the user; no output was written.") -> None:
        super().__init__(message)
