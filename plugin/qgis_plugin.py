"""The plugin object: Processing provider, toolbar button + menu entry, options page, clean unload.

Nothing on this load path imports numpy, rasterio or requests: without them the plugin still loads, lists
its algorithms and says in the message bar what is missing (with an Install button).
"""

from __future__ import annotations

import sys
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsRasterLayer
from qgis.PyQt.QtWidgets import QAction

from .core.dependencies import Plan
from .gui.dependency_bar import DependencyBar, bar_text
from .gui.options import FloodMapperOptionsFactory
from .processing.provider import FloodMapperProvider
from .toolbelt import dependencies as plugin_packages
from .toolbelt import log as qlog
from .toolbelt import resources
from .toolbelt import settings as stored_settings
from .toolbelt.i18n import tr

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
        self.install_action: QAction | None = None
        self.dependency_bar: DependencyBar | None = None
        self.plan: Plan | None = None
        plugin_packages.activate_package_folder()  # packages an earlier Install put in the profile

    # QGIS calls initProcessing for headless use (qgis_process) and initGui for the desktop.
    def initProcessing(self) -> None:
        if self.plan is None:
            self.plan = plugin_packages.report_at_load()
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
        self.action = QAction(resources.icon(), tr("Map floods on the active layer"), self.iface.mainWindow())
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
        self.install_action = QAction(tr("Install Python dependencies…"), self.iface.mainWindow())
        self.install_action.setObjectName("floodmapper_install_dependencies")
        self.install_action.triggered.connect(self.check_dependencies)
        self.iface.addPluginToMenu(MENU, self.install_action)
        self.options_factory = FloodMapperOptionsFactory()
        self.iface.registerOptionsWidgetFactory(self.options_factory)
        self.dependency_bar = DependencyBar(self.iface)
        if self.plan is not None and not self.plan.ok:
            self.dependency_bar.show(self.plan)
        self.model_action = QAction(QgsApplication.getThemeIcon("/processingModel.svg"),
                                    tr("Flood outline model in the Model Designer…"), self.iface.mainWindow())
        self.model_action.setObjectName("floodmapper_flood_outline_model")
        self.model_action.setToolTip(tr("Open the shipped Flood outline model in the Model Designer, to adapt it "
                                        "and save it as a model of your own"))
        self.model_action.triggered.connect(self.open_outline_model)
        self.iface.addPluginToMenu(MENU, self.model_action)

    def unload(self) -> None:
        if self.dependency_bar is not None:
            if self.dependency_bar.task is not None:
                self.dependency_bar.task.cancel()
            self.dependency_bar.clear()
            self.dependency_bar = None
        if self.options_factory is not None:
            self.iface.unregisterOptionsWidgetFactory(self.options_factory)
            self.options_factory = None
        for action in (self.action, self.options_action, self.install_action, self.model_action):
            if action is not None:
                self.iface.removePluginMenu(MENU, action)
                action.deleteLater()
        self.action = self.options_action = self.install_action = self.model_action = None
        if self.toolbar is not None:
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        engines = sys.modules.get(f"{__package__}.core.engines")
        if engines is not None:  # only a run that used the local engine imported it (and may have started one)
            engines.stop_all()
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

    def check_dependencies(self) -> None:
        """The menu entry: check again, and show the Install bar or say that nothing is missing."""
        self.plan = plugin_packages.report_at_load()
        if self.plan.ok and not self.plan.install:
            self.iface.messageBar().pushMessage(
                tr("Flood Mapper"), tr("All Python packages Flood Mapper needs are installed."),
                Qgis.MessageLevel.Success, 5)
        elif self.dependency_bar is not None:  # something missing, or only an optional package to offer
            self.dependency_bar.show(self.plan)

    def open_outline_model(self) -> None:
        from .gui.model_designer import open_in_model_designer

        if open_in_model_designer(OUTLINE_MODEL) is None:
            self.iface.messageBar().pushMessage(
                tr("Flood Mapper"),
                bar_text(tr("The model {path} could not be read; reinstall the plugin.").format(path=OUTLINE_MODEL)),
                Qgis.MessageLevel.Warning,
                8,
            )

    def show_options(self) -> None:
        self.iface.showOptionsDialog(self.iface.mainWindow(), currentPage="floodmapperOptions")
