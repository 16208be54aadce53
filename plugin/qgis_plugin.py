"""The plugin object: Processing provider, toolbar button + menu entry, options page, clean unload."""

from __future__ import annotations

from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsRasterLayer
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .processing.provider import FloodMapperProvider
from .toolbelt import log as qlog
from .toolbelt import settings as stored_settings
from .toolbelt.i18n import tr

ICON = Path(__file__).resolve().parents[1] / "resources" / "icons" / "floodmapper.svg"
OUTLINE_MODEL = Path(__file__).resolve().parents[1] / "resources" / "models" / "flood_outline.model3"
MENU = "&Flood Mapper"
ALGORITHM_ID = "floodmapper:map_floods"


class FloodMapperPlugin:
    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: FloodMapperProvider | None = None
        self.action: QAction | None = None
        self.options_action: QAction | None = None
        self.model_action: QAction | None = None
        self.toolbar = None
        self.options_factory = None

    # QGIS calls initProcessing for headless use (qgis_process) and initGui for the desktop.
    def initProcessing(self) -> None:
        if self.provider is None:
            provider = FloodMapperProvider()
            # addProvider refuses (and deletes) a second provider with the same id
            if QgsApplication.processingRegistry().addProvider(provider):
                self.provider = provider
            else:
                qlog.log(tr("Another 'floodmapper' Processing provider is already registered; using it."),
                         Qgis.MessageLevel.Warning)

    def initGui(self) -> None:
        qlog.install()
        self.initProcessing()
        self.action = QAction(QIcon(str(ICON)), tr("Map floods on the active layer"), self.iface.mainWindow())
        self.action.setObjectName("floodmapper_map_floods")
        self.action.setToolTip(tr("Map floods: open the Map floods dialog for the active raster layer"))
        self.action.triggered.connect(self.run_on_active_layer)
        self.toolbar = self.iface.addToolBar(tr("Flood Mapper"))
        self.toolbar.setObjectName("FloodMapperToolbar")
        self.toolbar.addAction(self.action)
        self.iface.addPluginToMenu(MENU, self.action)
        self.options_action = QAction(tr("Options…"), self.iface.mainWindow())
        self.options_action.setObjectName("floodmapper_options")
        self.options_action.triggered.connect(self.show_options)
        self.iface.addPluginToMenu(MENU, self.options_action)
        self.model_action = QAction(QgsApplication.getThemeIcon("/processingModel.svg"),
                                    tr("Flood outline model in the Model Designer…"), self.iface.mainWindow())
        self.model_action.setObjectName("floodmapper_flood_outline_model")
        self.model_action.setToolTip(tr("Open the shipped Flood outline model in the Model Designer, to adapt it "
                                        "and save it as a model of your own"))
        self.model_action.triggered.connect(self.open_outline_model)
        self.iface.addPluginToMenu(MENU, self.model_action)
        try:
            from .gui.options import FloodMapperOptionsFactory
        except ImportError:
            FloodMapperOptionsFactory = None  # noqa: N806
        if FloodMapperOptionsFactory is not None:
            self.options_factory = FloodMapperOptionsFactory()
            self.iface.registerOptionsWidgetFactory(self.options_factory)

    def unload(self) -> None:
        if self.options_factory is not None:
            self.iface.unregisterOptionsWidgetFactory(self.options_factory)
            self.options_factory = None
        for action in (self.action, self.options_action, self.model_action):
            if action is not None:
                self.iface.removePluginMenu(MENU, action)
                action.deleteLater()
        self.action = self.options_action = self.model_action = None
        if self.toolbar is not None:
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        from .core.engine import stop_all

        stop_all()
        qlog.uninstall()

    # --- toolbar -----------------------------------------------------------------------------------------
    def dialog_parameters(self, layer) -> dict:
        """What the dialog opens with: the active layer and the backend used last time."""
        last_backend = stored_settings.get_value("last_backend", 1)
        return {"INPUT": layer.id(), "BACKEND": int(last_backend) if str(last_backend) in ("0", "1") else 1}

    def run_on_active_layer(self) -> None:
        layer = self.iface.activeLayer()
        if not isinstance(layer, QgsRasterLayer):
            self.iface.messageBar().pushMessage(
                tr("Flood Mapper"),
                tr("Select a multispectral raster layer in the Layers panel, then click Map floods again."),
                Qgis.MessageLevel.Info,
                8,
            )
            return
        import processing

        processing.execAlgorithmDialog(ALGORITHM_ID, self.dialog_parameters(layer))

    def open_outline_model(self) -> None:
        from .gui.model_designer import open_in_model_designer

        if open_in_model_designer(OUTLINE_MODEL) is None:
            self.iface.messageBar().pushMessage(
                tr("Flood Mapper"),
                tr("The model {path} could not be read; reinstall the plugin.").format(path=OUTLINE_MODEL),
                Qgis.MessageLevel.Warning,
                8,
            )

    def show_options(self) -> None:
        self.iface.showOptionsDialog(self.iface.mainWindow(), currentPage="floodmapperOptions")
