"""Adapter from QgsProcessingFeedback to the core Progress interface."""

from __future__ import annotations

from qgis.core import QgsProcessingFeedback


class FeedbackProgress:
    def __init__(self, feedback: QgsProcessingFeedback | None) -> None:
        self.feedback = feedback or QgsProcessingFeedback()

    def set_progress(self, percent: float) -> None:
        self.feedback.setProgress(percent)

    def info(self, message: str) -> None:
        self.feedback.pushInfo(message)

    def warning(self, message: str) -> None:
        self.feedback.pushWarning(message)

    def is_canceled(self) -> bool:
        return self.feedback.isCanceled()
