"""The message bar that says which Python packages are missing, with its Install button and the outcome."""

from __future__ import annotations

import html
from typing import Optional

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtWidgets import QPushButton

from ..core import dependencies
from ..toolbelt import dependencies as plugin_packages
from ..toolbelt.i18n import tr
from .install_task import InstallDependenciesTask

TITLE = "Flood Mapper"
BUTTON_NAME = "floodmapper_install_dependencies"


def bar_text(text: str) -> str:
    """A message bar item shows its text as HTML (its title is bold markup): a '<' in a version range
    ("< 3") or an error would start a tag and hide the rest of the message."""
    return html.escape(text, quote=False)


class DependencyBar:
    """Shows what is missing (once per check) and runs the install task when the button is clicked."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.item = None
        self.task: Optional[InstallDependenciesTask] = None
        self.plan: Optional[dependencies.Plan] = None

    def show(self, plan: dependencies.Plan) -> None:
        """A lasting warning naming what is missing (a note, when only optional packages are), with an Install
        button when installing can fix it."""
        self.plan = plan
        self.clear()
        bar = self.iface.messageBar()
        level = Qgis.MessageLevel.Warning
        if plan.blocked:
            text = str(plugin_packages.missing_error(plan))
        elif plan.ok:  # only optional packages to offer
            level = Qgis.MessageLevel.Info
            text = tr("All Python packages Flood Mapper needs are installed. Optional: {faster}. Install puts {pins} "
                      "into {folder}.").format(faster=plan.faster_text(), pins=plan.install_text(),
                                               folder=plugin_packages.package_folder())
        else:
            text = tr("Python packages missing from QGIS's Python: {missing}. The algorithms are listed but "
                      "cannot run until they are installed. Install puts {pins} into {folder}.").format(
                missing=plan.summary(), pins=plan.install_text(), folder=plugin_packages.package_folder())
        item = bar.createMessage(TITLE, bar_text(text))
        if plan.install and not plan.blocked:
            button = QPushButton(tr("Install"), item)
            button.setObjectName(BUTTON_NAME)
            button.setToolTip(tr("Install the pinned versions with QGIS's own Python (progress in the task "
                                 "manager, where it can be cancelled)"))
            button.clicked.connect(self.install)
            item.layout().addWidget(button)
        self.item = item
        bar.pushWidget(item, level)

    def clear(self) -> None:
        if self.item is not None:
            try:
                self.iface.messageBar().popWidget(self.item)
            except RuntimeError:  # already closed by the user (the C++ item is gone)
                pass
            self.item = None

    def install(self) -> Optional[InstallDependenciesTask]:
        if self.plan is None or not self.plan.install or self.task is not None:
            return None
        self.clear()
        self.task = InstallDependenciesTask(self.plan, plugin_packages.package_folder(), self._done)
        QgsApplication.taskManager().addTask(self.task)
        self._push(tr("Installing {pins}… (progress and Cancel in the task manager)").format(
            pins=self.plan.install_text()), Qgis.MessageLevel.Info, 10)
        return self.task

    def _push(self, text: str, level: Qgis.MessageLevel, seconds: int) -> None:
        """A message under the plugin's title, its text shown whole (bar_text); 0 seconds: until closed."""
        self.iface.messageBar().pushMessage(TITLE, bar_text(text), level, seconds)

    def _done(self, task: InstallDependenciesTask) -> None:
        self.task = None
        if task.installed is None:
            if task.cancelled or not task.error:
                self._push(tr("Installation cancelled; nothing was changed."), Qgis.MessageLevel.Info, 8)
            else:
                self._push(tr("Installing the Python packages failed: {error}").format(error=task.error),
                           Qgis.MessageLevel.Critical, 0)
            return
        if task.restart_for:
            self._push(tr("Installed {pins} into {folder}. Restart QGIS to use them: this session already loaded "
                          "another {modules}.").format(pins=task.plan.install_text(), folder=task.folder,
                                                       modules=", ".join(task.restart_for)),
                       Qgis.MessageLevel.Warning, 0)
        elif task.failures:
            self._push(tr("Installed into {folder}, but {failures}. Restart QGIS and try again.").format(
                folder=task.folder, failures="; ".join(f"{k}: {v}" for k, v in task.failures.items())),
                Qgis.MessageLevel.Warning, 0)
        else:
            self._push(tr("Installed {pins}: Flood Mapper is ready, no restart needed.").format(
                pins=task.plan.install_text()), Qgis.MessageLevel.Success, 10)
