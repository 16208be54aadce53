"""The Processing models shipped in resources/models, listed by the provider as algorithms.

Each `<stem>.model3` becomes `floodmapper:<stem>` in the group "Models": in the Toolbox, the batch dialog,
other models and qgis_process, under the name the model gives itself. The files are ordinary Model Designer
files: Processing ▸ Model Designer ▸ Open Model… opens them to adapt (and save elsewhere).
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import Qgis, QgsProcessingModelAlgorithm
from qgis.PyQt.QtGui import QIcon

from ..toolbelt import log as qlog
from ..toolbelt.i18n import tr

MODELS_DIR = Path(__file__).resolve().parents[2] / "resources" / "models"
ICON = Path(__file__).resolve().parents[2] / "resources" / "icons" / "floodmapper.svg"


class ShippedModel(QgsProcessingModelAlgorithm):
    """A model read from its .model3 file, with a stable id (the file's stem) and the plugin's group."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = Path(path)
        self.loaded = self.fromFile(str(self._path))
        self.setSourceFilePath("")  # read-only: Save in the Designer asks where, the shipped file stays as is

    def createInstance(self) -> ShippedModel:
        return ShippedModel(self._path)

    def name(self) -> str:
        return self._path.stem

    def displayName(self) -> str:
        return QgsProcessingModelAlgorithm.displayName(self)

    def group(self) -> str:
        return tr("Models")

    def groupId(self) -> str:
        return "models"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def model_file(self) -> Path:
        return self._path


def shipped_models(folder: Path = MODELS_DIR) -> list[ShippedModel]:
    """Every readable .model3 in `folder`; one that cannot be read is logged and left out."""
    models = []
    for path in sorted(folder.glob("*.model3")):
        model = ShippedModel(path)
        if model.loaded:
            models.append(model)
        else:
            qlog.log(tr("The model {path} could not be read; it is left out of the Toolbox.").format(path=path),
                     Qgis.MessageLevel.Warning)
    return models
