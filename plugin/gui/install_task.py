"""The Install button's work as a QgsTask: pip in the background with progress and cancel, then the packages
made importable in this QGIS (core.pip_installer and core.dependency_folder do the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from qgis.core import Qgis, QgsTask

from ..core import dependencies
from ..core.dependency_folder import activate, imported_elsewhere
from ..core.errors import Cancelled, FloodMapperError
from ..core.pip_installer import Installed, install
from ..toolbelt import log as qlog
from ..toolbelt.i18n import tr


class TaskProgress:
    """core.progress.Progress on a QgsTask: percent to the task, lines to the QGIS log, cancel from the task."""

    def __init__(self, task: QgsTask) -> None:
        self.task = task

    def set_progress(self, percent: float) -> None:
        self.task.setProgress(float(percent))

    def info(self, message: str) -> None:
        qlog.log(message)

    def warning(self, message: str) -> None:
        qlog.log(message, Qgis.MessageLevel.Warning)

    def is_canceled(self) -> bool:
        return self.task.isCanceled()


class InstallDependenciesTask(QgsTask):
    """Install the plan's pins into `folder`; `on_done(task)` runs on the main thread when it ends.

    After it: `installed` (what pip put there), `restart_for` (modules this QGIS had already imported from
    elsewhere, usable only after a restart), `failures` (modules that still do not import here) or `error`.
    """

    def __init__(self, plan: dependencies.Plan, folder: Path, on_done: Callable[[InstallDependenciesTask], None],
                 python: Optional[str] = None) -> None:
        super().__init__(tr("Flood Mapper: installing Python packages"), QgsTask.Flag.CanCancel)
        self.plan = plan
        self.folder = Path(folder)
        self.python = python
        self.on_done = on_done
        # the labels are the modules the plugin imports; an optional package is checked by its own module
        self.modules = list(plan.missing) + [u.requirement.module for u in plan.faster]
        self.installed: Optional[Installed] = None
        self.restart_for: list[str] = []
        self.failures: dict[str, str] = {}
        self.error = ""
        self.cancelled = False

    def run(self) -> bool:  # a worker thread: no widgets here
        try:
            self.installed = install(self.plan.install, self.folder, self.modules, python=self.python,
                                     progress=TaskProgress(self), on_line=lambda line: qlog.log(f"[pip] {line}"))
            activate(self.folder)
            # any module of what was installed that this session already holds from elsewhere (an old urllib3
            # another plugin imported) keeps being used until QGIS restarts
            self.restart_for = imported_elsewhere(dependencies.modules_of(self.plan.install), self.folder)
            if not self.restart_for:
                self.failures = dependencies.import_failures(tuple(self.modules))
        except Cancelled as exc:
            self.cancelled = True
            self.error = str(exc)
            return False
        except FloodMapperError as exc:
            self.error = str(exc)
            return False
        except Exception as exc:  # noqa: BLE001 - reported in the message bar, never a traceback dialog
            self.error = f"{type(exc).__name__}: {exc}"
            return False
        return True

    def finished(self, result: bool) -> None:  # the main thread
        if self.error:
            qlog.log(self.error, Qgis.MessageLevel.Warning if self.cancelled else Qgis.MessageLevel.Critical)
        self.on_done(self)
