"""Settings stored in QgsSettings under "floodmapper/", read into the plain core Settings value.

Environment variables (FLOODMAPPER_*) override stored values, so qgis_process and CI need no profile.
Secrets are never stored here: only the id of a QGIS authentication configuration (`authcfg`).
"""

from __future__ import annotations

from dataclasses import asdict, fields, replace

from qgis.core import QgsSettings

from ..core.settings import Settings

PREFIX = "floodmapper/"


def load(apply_env: bool = True) -> Settings:
    stored = QgsSettings()
    defaults = Settings()
    values = {}
    for f in fields(Settings):
        default = getattr(defaults, f.name)
        raw = stored.value(PREFIX + f.name, None)
        if raw is None or raw == "":
            continue
        if isinstance(default, bool):
            values[f.name] = raw in (True, "true", "True", "1", 1)
        elif isinstance(default, int):
            values[f.name] = int(raw)
        elif isinstance(default, float):
            values[f.name] = float(raw)
        else:
            values[f.name] = str(raw)
    settings = replace(defaults, **values)
    return settings.with_env() if apply_env else settings


def save(settings: Settings) -> None:
    stored = QgsSettings()
    defaults = asdict(Settings())
    for name, value in asdict(settings).items():
        if value == defaults[name]:
            stored.remove(PREFIX + name)  # keep defaults unpinned, so a new release can improve them
        else:
            stored.setValue(PREFIX + name, value)


def get_value(key: str, default=None):
    return QgsSettings().value(PREFIX + key, default)


def set_value(key: str, value) -> None:
    QgsSettings().setValue(PREFIX + key, value)
