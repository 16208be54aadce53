"""The small callback interface through which core code reports progress and checks for cancel.

The QGIS side adapts QgsProcessingFeedback to it; plain Python uses NullProgress or a CLI bar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .errors import Cancelled


class Progress(Protocol):
    def set_progress(self, percent: float) -> None: ...

    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...

    def is_canceled(self) -> bool: ...


class NullProgress:
    """Progress that reports nothing and is never cancelled."""

    def set_progress(self, percent: float) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass

    def is_canceled(self) -> bool:
        return False


def check_cancel(progress: Progress) -> None:
    """Raise Cancelled when the user asked to stop."""
    if progress.is_canceled():
        raise Cancelled()


@dataclass(frozen=True)
class ProgressSpan:
    """A stretch of the progress bar, in percent: a step of the job reports within its own span."""

    start: float = 0.0
    end: float = 100.0

    def at(self, fraction: float) -> float:
        """The percent where `fraction` (0-1) of this span is done."""
        return self.start + (self.end - self.start) * min(max(float(fraction), 0.0), 1.0)

    def split(self, fraction: float) -> tuple[ProgressSpan, ProgressSpan]:
        """This span cut in two at `fraction`."""
        middle = self.at(fraction)
        return ProgressSpan(self.start, middle), ProgressSpan(middle, self.end)
