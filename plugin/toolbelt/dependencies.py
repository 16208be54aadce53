"""The plugin's Python packages as QGIS sees them: its folder in the active profile, the check an algorithm
starts with, and the log line a headless load leaves (the logic is core.dependencies)."""

from __future__ import annotations

from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsProcessingException

from ..core import dependencies
from ..core.dependency_folder import activate, folder_for
from ..core.pip_installer import command_text, likely_python, pip_command
from . import log as qlog


def package_folder() -> Path:
    """<active QGIS profile>/floodmapper/python3.X-<platform>."""
    return folder_for(QgsApplication.qgisSettingsDirPath())


def activate_package_folder() -> bool:
    """Put the plugin's package folder first on sys.path if an earlier Install made it."""
    return activate(package_folder())


def install_command(plan: dependencies.Plan) -> str:
    return command_text(pip_command(likely_python(), package_folder(), plan.install))


def missing_error(plan: dependencies.Plan) -> dependencies.DependencyError:
    return dependencies.explain(plan, package_folder(), install_command(plan))


def report_at_load() -> dependencies.Plan:
    """Check without importing anything; a missing package goes to the QGIS log (the GUI adds a message bar)."""
    plan = dependencies.check()
    if not plan.ok:
        qlog.log(str(missing_error(plan)), Qgis.MessageLevel.Warning)
    elif plan.faster:
        qlog.log(faster_note(plan))
    return plan


def faster_note(plan: dependencies.Plan) -> str:
    """What an optional package would bring, and how to get it (the plugin runs without it)."""
    return (f"Optional, not installed: {plan.faster_text()}. Plugins ▸ Flood Mapper ▸ Install Python "
            f"dependencies… installs {plan.install_text()} into {package_folder()}; or run {install_command(plan)}.")


def require_dependencies() -> None:
    """First thing an algorithm does: a clear QgsProcessingException when a package is missing or broken."""
    plan = dependencies.check()
    if not plan.ok:
        error = missing_error(plan)
        qlog.log(str(error), Qgis.MessageLevel.Critical)
        raise QgsProcessingException(str(error))
    failures = dependencies.import_failures()
    if failures:
        text = ("Flood Mapper's Python packages are installed but do not import: "
                + "; ".join(f"{name}: {why}" for name, why in failures.items())
                + f". Reinstall them for this QGIS (the plugin's package folder is {package_folder()}), "
                  "or take a copy made for another Python off PYTHONPATH, then restart QGIS.")
        qlog.log(text, Qgis.MessageLevel.Critical)
        raise QgsProcessingException(text)
