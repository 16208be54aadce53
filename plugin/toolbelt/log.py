"""Python logging forwarded to QGIS's message log (tab "Flood Mapper"), with scoped levels.

Core modules log with `logging.getLogger("floodmapper")`; the plugin installs this handler once, so the
same messages reach the QGIS log panel from the GUI, the batch dialog and qgis_process.
"""

from __future__ import annotations

import logging

from qgis.core import Qgis, QgsMessageLog

TAG = "Flood Mapper"
LOGGER_NAME = "floodmapper"


class QgsMessageLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:  # noqa: BLE001 (logging must never raise into the caller)
            self.handleError(record)
            return
        if record.levelno >= logging.ERROR:
            level = Qgis.MessageLevel.Critical
        elif record.levelno >= logging.WARNING:
            level = Qgis.MessageLevel.Warning
        else:
            level = Qgis.MessageLevel.Info
        QgsMessageLog.logMessage(message, TAG, level, notifyUser=False)


def install() -> logging.Logger:
    """Attach the handler to the plugin's logger (idempotent) and return the logger."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, QgsMessageLogHandler) for h in logger.handlers):
        handler = QgsMessageLogHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def uninstall() -> None:
    logger = logging.getLogger(LOGGER_NAME)
    for handler in [h for h in logger.handlers if isinstance(h, QgsMessageLogHandler)]:
        logger.removeHandler(handler)


def log(message: str, level: Qgis.MessageLevel = Qgis.MessageLevel.Info) -> None:
    QgsMessageLog.logMessage(message, TAG, level, notifyUser=False)


def engine_log(line: str) -> None:
    """The local engine's log lines go to the QGIS log panel too."""
    log(f"[engine] {line}")
