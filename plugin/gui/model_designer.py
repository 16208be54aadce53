"""Opens a shipped model in QGIS's Model Designer, as an unsaved copy (Save asks where; the file stays as is)."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingModelAlgorithm


def open_in_model_designer(path: Path):
    """The Model Designer window showing the model read from `path`; None if the file cannot be read."""
    from processing.modeler.ModelerDialog import ModelerDialog

    model = QgsProcessingModelAlgorithm()
    if not model.fromFile(str(path)):
        return None
    model.setSourceFilePath("")
    dialog = ModelerDialog.create(model)  # keeps the Python wrapper alive while the window is open
    dialog.show()
    dialog.raise_()
    dialog.activateWindow()
    return dialog
