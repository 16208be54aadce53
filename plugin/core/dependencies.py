"""Which Python packages the plugin needs in QGIS's Python, which of them this Python lacks, and which pinned
versions would fix that (QGIS-free; imports nothing outside the standard library).

The plugin imports numpy, rasterio and requests (with urllib3 2), and pybase64 when it is there (SPEEDUPS: what
the plugin runs without, only slower). The check here only *finds* modules
(importlib.util.find_spec plus the version recorded beside the module), so it runs at plugin load without
importing any of them; `import_failures` really imports them, for the moment an algorithm starts.

What gets installed comes from requirements/plugin.txt (exact pins, the whole closure, with environment
markers on python_version): only the packages that are missing or outside the range the plugin works with,
and never numpy over a numpy QGIS already has (QGIS's own compiled modules are built against that one).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .errors import FloodMapperError

PLUGIN_DIR = Path(__file__).resolve().parents[2]
REQUIREMENTS_FILE = PLUGIN_DIR / "requirements" / "plugin.txt"


class DependencyError(FloodMapperError):
    """A Python package the plugin needs is missing or unusable, or installing it failed."""


@dataclass(frozen=True)
class Requirement:
    """One distribution the plugin needs, as it is imported, with the versions the plugin works with."""

    distribution: str  # the name pip knows
    module: str  # the name `import` uses
    minimum: str = ""  # oldest version that works ("" = any)
    below: str = ""  # first version that no longer works ("" = none)
    replace: bool = True  # False: a copy QGIS has is never replaced, only reported
    # needed only while another distribution's version compares so, e.g. ("rasterio", "<", "1.5"): the version
    # found, or the pinned one that would be installed in its place ("" = always needed)
    when: tuple[str, str, str] = ()
    use: str = ""  # an optional package (SPEEDUPS): what it brings


@dataclass(frozen=True)
class Need:
    """A package the plugin imports (its label) and what it needs to import: itself and its dependencies."""

    label: str
    requirements: tuple[Requirement, ...]


NUMPY = Requirement("numpy", "numpy", replace=False)
NEEDS: tuple[Need, ...] = (
    Need("numpy", (NUMPY,)),
    Need("rasterio", (
        Requirement("rasterio", "rasterio", minimum="1.4"),
        # the pinned rasterio wheels are built against numpy 2, which reads arrays of numpy >= 1.24 only
        Requirement("numpy", "numpy", minimum="1.24", replace=False),
        # affine 3 breaks rasterio 1.4's transforms; rasterio 1.5 takes it and no longer needs cligj and
        # click-plugins (Debian's python3-rasterio 1.5 comes with affine 3 and without them)
        Requirement("affine", "affine", minimum="2.3", below="3", when=("rasterio", "<", "1.5")),
        Requirement("affine", "affine", minimum="2.3", when=("rasterio", ">=", "1.5")),
        Requirement("attrs", "attr"),
        Requirement("certifi", "certifi"),
        Requirement("click", "click"),
        Requirement("click-plugins", "click_plugins", when=("rasterio", "<", "1.5")),
        Requirement("cligj", "cligj", when=("rasterio", "<", "1.5")),
        Requirement("pyparsing", "pyparsing"),
    )),
    Need("requests", (
        Requirement("requests", "requests", minimum="2.30"),  # the first requests made for urllib3 2
        Requirement("urllib3", "urllib3", minimum="2.0"),  # the client uses urllib3 2's API
        Requirement("idna", "idna"),
        Requirement("charset-normalizer", "charset_normalizer"),
        Requirement("certifi", "certifi"),
    )),
)
# What the plugin runs without, only slower. Never reported as missing: the Install button adds it to what it
# installs, and the menu entry offers it on its own. pybase64: a tensor request carries its tile as base64
# (4.2 MB for a 512x512x6 float16 tile); the standard library's encoder takes ~2.8 ms of a core per tile and
# holds the GIL, pybase64's SIMD one ~0.25 ms. Against a fast server a run maps ~40 % more tiles per second.
SPEEDUPS: tuple[Requirement, ...] = (Requirement("pybase64", "pybase64", minimum="1.0", use="faster tensor requests"),)


# --- pins ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pin:
    """One line of requirements/plugin.txt: `name==version [; marker]`."""

    name: str
    version: str
    marker: str = ""

    @property
    def spec(self) -> str:
        """What pip is given: the exact version (the marker was already evaluated for this Python)."""
        return f"{self.name}=={self.version}"


_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)\s*(?:;\s*(.+?))?\s*$")
_CLAUSE = re.compile(r"""^\s*python_version\s*(<=|>=|==|!=|<|>)\s*["'](\d+(?:\.\d+)*)["']\s*$""")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: str | Path = REQUIREMENTS_FILE) -> list[Pin]:
    """Every pin of the requirements file; anything but `name==version [; python_version markers]` is refused."""
    pins: list[Pin] = []
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        if not match:
            raise ValueError(f"{path}:{number}: not an exact pin (name==version [; marker]): {raw.strip()}")
        name, version, marker = match.groups()
        marker = marker or ""
        marker_applies(marker, (3, 11))  # refuses markers this reader cannot evaluate, at read time
        pins.append(Pin(normalize(name), version, marker))
    return pins


def version_tuple(text: str) -> tuple[int, ...]:
    """'2.0.2' -> (2, 0, 2), '1.26.12+dfsg' -> (1, 26, 12), '2026.10.19.post1' -> (2026, 10, 19)."""
    parts: list[int] = []
    for piece in text.split("+")[0].split("."):
        digits = re.match(r"\d*", piece).group()
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def marker_applies(marker: str, python: tuple[int, ...]) -> bool:
    """Evaluate `python_version OP "X.Y"` clauses joined by `and` (all requirements/plugin.txt uses)."""
    if not marker.strip():
        return True
    here = tuple(python[:2])
    for clause in re.split(r"\s+and\s+", marker.strip()):
        match = _CLAUSE.match(clause)
        if not match:
            raise ValueError(f"unsupported environment marker: {marker!r} (only python_version clauses with 'and')")
        op, wanted = match.group(1), version_tuple(match.group(2))
        ok = {"<": here < wanted, "<=": here <= wanted, ">": here > wanted, ">=": here >= wanted,
              "==": here == wanted, "!=": here != wanted}[op]
        if not ok:
            return False
    return True


def pins_for(python: tuple[int, ...], pins: Optional[list[Pin]] = None) -> dict[str, Pin]:
    """The pin of each distribution for this Python (normalized name -> pin)."""
    chosen: dict[str, Pin] = {}
    for pin in read_pins() if pins is None else pins:
        if marker_applies(pin.marker, python):
            if pin.name in chosen:
                raise ValueError(f"two pins of {pin.name} apply to Python {python[0]}.{python[1]}")
            chosen[pin.name] = pin
    return chosen


# --- what this Python has --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Found:
    """Where a module would be imported from, and the version of the distribution installed there."""

    location: str  # the folder on sys.path that holds it
    version: str  # "" when no metadata sits beside it


def probe(requirement: Requirement) -> Optional[Found]:
    """Find (not import) the module; None when `import` would fail to find it."""
    try:
        spec = importlib.util.find_spec(requirement.module)
    except (ImportError, ValueError):  # a finder refused it, or a half-imported module in sys.modules
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        location = os.path.dirname(os.path.abspath(list(spec.submodule_search_locations)[0]))
    elif spec.origin and os.path.isabs(spec.origin):
        location = os.path.dirname(spec.origin)
    else:
        return Found("", "")
    return Found(location, installed_version(requirement.distribution, location))


def installed_version(distribution: str, location: str) -> str:
    """The version recorded in `location` (dist-info or egg-info) for this distribution, or ""."""
    wanted = normalize(distribution)
    try:
        for dist in importlib.metadata.distributions(path=[location]):
            if normalize(dist.metadata["Name"] or "") == wanted:
                return dist.version
    except (OSError, ValueError):
        pass
    return ""


# --- the plan --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unmet:
    requirement: Requirement
    found: Optional[Found]

    def describe(self) -> str:
        r, found = self.requirement, self.found
        if found is None:
            return f"{r.distribution} (missing)"
        wanted = " and ".join(x for x in (f">= {r.minimum}" if r.minimum else "", f"< {r.below}" if r.below else "")
                              if x)
        return f"{r.distribution} {found.version} (needs {wanted})"


def unmet(requirement: Requirement, found: Optional[Found]) -> Optional[Unmet]:
    if found is None:
        return Unmet(requirement, None)
    version = version_tuple(found.version)
    if not version:  # no version recorded: trust the module that is there
        return None
    if requirement.minimum and version < version_tuple(requirement.minimum):
        return Unmet(requirement, found)
    if requirement.below and version >= version_tuple(requirement.below):
        return Unmet(requirement, found)
    return None


def applies(requirement: Requirement, python: tuple[int, ...], pins: Optional[list[Pin]],
            find: Callable[[Requirement], Optional[Found]]) -> bool:
    """Whether `requirement.when` holds: against the version found of that distribution when it is usable,
    else the pinned version that would replace it; with neither known, it holds (checked rather than not)."""
    if not requirement.when:
        return True
    distribution, op, version = requirement.when
    other = next(r for need in NEEDS for r in need.requirements if r.distribution == distribution and not r.when)
    found = find(other)
    if found is not None and version_tuple(found.version) and unmet(other, found) is None:
        have = version_tuple(found.version)
    else:
        try:
            pin = pins_for(python, pins).get(normalize(distribution))
        except (OSError, ValueError):
            pin = None
        have = version_tuple(pin.version) if pin else ()
    if not have:
        return True
    return have < version_tuple(version) if op == "<" else have >= version_tuple(version)


@dataclass
class Plan:
    """What the plugin lacks in this Python and how to fix it."""

    missing: list[str] = field(default_factory=list)  # labels of the needs that are not met
    unmet: list[Unmet] = field(default_factory=list)  # the distributions behind them
    install: list[Pin] = field(default_factory=list)  # exact pins to install (empty when nothing can be)
    blocked: list[str] = field(default_factory=list)  # what installing cannot fix, in words
    faster: list[Unmet] = field(default_factory=list)  # SPEEDUPS this Python lacks (in `install` when pinned)

    @property
    def ok(self) -> bool:
        return not self.unmet

    def summary(self) -> str:
        return ", ".join(u.describe() for u in self.unmet)

    def faster_text(self) -> str:
        """'pybase64 (faster tensor requests)': what the optional packages missing here would bring."""
        return ", ".join(f"{u.requirement.distribution} ({u.requirement.use})" for u in self.faster)

    def install_text(self) -> str:
        return ", ".join(f"{p.name} {p.version}" for p in self.install)


def check(python: tuple[int, ...] = tuple(sys.version_info[:2]), pins: Optional[list[Pin]] = None,
          find: Callable[[Requirement], Optional[Found]] = probe) -> Plan:
    """Find every requirement; plan the pins that fix what is missing or out of range."""
    plan = Plan()
    seen: dict[str, Optional[Unmet]] = {}
    for need in NEEDS:
        need_unmet = False
        for requirement in need.requirements:
            if not applies(requirement, python, pins, find):
                continue
            key = f"{requirement.distribution}:{requirement.minimum}:{requirement.below}"
            if key not in seen:
                seen[key] = unmet(requirement, find(requirement))
                if seen[key] is not None and seen[key].describe() not in [u.describe() for u in plan.unmet]:
                    plan.unmet.append(seen[key])  # a missing numpy is one problem, whoever needs it
            need_unmet = need_unmet or seen[key] is not None
        if need_unmet:
            plan.missing.append(need.label)
    try:
        available = pins_for(python, pins)
    except (OSError, ValueError) as exc:
        plan.blocked.append(f"the pinned versions cannot be read ({exc})")
        return plan
    queued: set[str] = set()
    for item in plan.unmet:
        r = item.requirement
        name = normalize(r.distribution)
        if item.found is not None and not r.replace:
            plan.blocked.append(
                f"{r.distribution} {item.found.version} in {item.found.location} is older than {r.minimum}, and "
                f"the plugin does not replace the {r.distribution} QGIS is built with: use a QGIS whose Python "
                f"has {r.distribution} >= {r.minimum}")
            continue
        pin = available.get(name)
        if pin is None:
            plan.blocked.append(f"no pinned version of {r.distribution} for Python {python[0]}.{python[1]}")
        elif name not in queued:
            queued.add(name)
            plan.install.append(pin)
    if plan.blocked:
        plan.install = []
        return plan
    for requirement in SPEEDUPS:
        missing = unmet(requirement, find(requirement))
        pin = available.get(normalize(requirement.distribution))
        if missing is not None and pin is not None:
            plan.faster.append(missing)
            plan.install.append(pin)
    return plan


def modules_of(pins: list[Pin]) -> list[str]:
    """The import names of these distributions (those the plugin checks), once each, in NEEDS order."""
    names = {pin.name for pin in pins}
    modules: list[str] = []
    for r in [r for need in NEEDS for r in need.requirements] + list(SPEEDUPS):
        if normalize(r.distribution) in names and r.module not in modules:
            modules.append(r.module)
    return modules


def import_failures(modules: tuple[str, ...] = ("numpy", "rasterio", "requests", "urllib3")) -> dict[str, str]:
    """Really import each module: {module: why it failed, and from which folder} (empty when all import). The
    folder tells a broken copy from a copy made for another Python that sits first on the path (PYTHONPATH)."""
    failures: dict[str, str] = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a broken package raises anything; it is reported, not raised
            found = probe(Requirement(name, name))  # finds the copy again without importing it
            where = f" (the copy in {found.location})" if found is not None and found.location else ""
            failures[name] = f"{type(exc).__name__}: {exc}{where}"
    return failures


def explain(plan: Plan, folder: str | Path, command: str) -> DependencyError:
    """The error an algorithm ends with while the plugin lacks packages: what is missing and both ways out."""
    message = f"Flood Mapper needs Python packages QGIS's Python lacks: {plan.summary()}."
    if plan.blocked:
        return DependencyError(message, "Installing cannot fix this: " + "; ".join(plan.blocked) + ".")
    return DependencyError(
        message,
        "Install them from the QGIS desktop: click Install in Flood Mapper's message bar (or Plugins ▸ "
        f"Flood Mapper ▸ Install Python dependencies…), which puts {plan.install_text()} into {folder}; or run "
        f"{command} and restart QGIS.",
    )
