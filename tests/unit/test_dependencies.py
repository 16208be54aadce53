"""What the plugin needs in QGIS's Python, what is missing, what gets installed, and where (plain Python)."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from pathlib import Path

import pytest

from plugin.core import dependencies as deps
from plugin.core.dependency_folder import activate, folder_for, folder_name, imported_elsewhere
from tests.fixtures.import_blocker import ImportBlocker

PYTHONS = [(3, 9), (3, 10), (3, 11), (3, 12), (3, 13), (3, 14)]
GOOD = {"numpy": "1.24.2", "rasterio": "1.4.4", "affine": "2.4.0", "attrs": "22.2.0", "certifi": "2022.9.24",
        "click": "8.1.8", "click-plugins": "1.1.1.2", "cligj": "0.7.2", "pyparsing": "3.0.9",
        "requests": "2.32.5", "urllib3": "2.5.0", "idna": "3.3", "charset-normalizer": "3.0.1", "pybase64": "1.5.1"}


def finder(versions: dict[str, str | None]):
    """A `find` for deps.check: version per distribution, None = not importable."""
    def find(requirement: deps.Requirement):
        version = versions.get(requirement.distribution)
        return None if version is None else deps.Found("/usr/lib/python3/dist-packages", version)
    return find


def plan_for(python=(3, 11), **changes) -> deps.Plan:
    return deps.check(python=python, find=finder({**GOOD, **changes}))


def test_the_pins_cover_every_requirement_once_on_every_python():
    pins = deps.read_pins()
    requirements = [r for need in deps.NEEDS for r in need.requirements] + list(deps.SPEEDUPS)
    distributions = {deps.normalize(r.distribution) for r in requirements}
    for python in PYTHONS:
        chosen = deps.pins_for(python, pins)
        assert distributions <= set(chosen), (python, distributions - set(chosen))
        assert set(chosen) <= distributions, f"a pin nothing needs: {set(chosen) - distributions}"
        for r in requirements:
            pinned = deps.version_tuple(chosen[deps.normalize(r.distribution)].version)
            if r.minimum:
                assert pinned >= deps.version_tuple(r.minimum), (python, r)
            if r.below:
                assert pinned < deps.version_tuple(r.below), (python, r)
    assert deps.pins_for((3, 9), pins)["rasterio"].version == "1.4.1"
    assert deps.pins_for((3, 12), pins)["numpy"].spec == "numpy==2.3.5"


def test_the_numpy_floor_is_the_pinned_rasterio_wheels_own():
    """The installed rasterio (this venv's, the version pinned for it) declares the numpy it needs."""
    pinned = deps.pins_for(tuple(sys.version_info[:2]))["rasterio"].version
    assert importlib.metadata.version("rasterio") == pinned
    floors = [r for r in importlib.metadata.requires("rasterio") if r.replace(" ", "").startswith("numpy>=")]
    needs_numpy = next(r for n in deps.NEEDS if n.label == "rasterio" for r in n.requirements if r.module == "numpy")
    assert floors == [f"numpy>={needs_numpy.minimum}"]


def test_markers():
    assert deps.marker_applies("", (3, 9))
    assert deps.marker_applies('python_version < "3.10"', (3, 9))
    assert not deps.marker_applies('python_version < "3.10"', (3, 10))
    assert deps.marker_applies('python_version >= "3.10" and python_version < "3.11"', (3, 10))
    assert not deps.marker_applies('python_version >= "3.10" and python_version < "3.11"', (3, 11))
    with pytest.raises(ValueError, match="unsupported environment marker"):
        deps.marker_applies('sys_platform == "win32"', (3, 11))


def test_a_pin_that_is_not_exact_is_refused(tmp_path):
    bad = tmp_path / "req.txt"
    bad.write_text("numpy>=1.24\n")
    with pytest.raises(ValueError, match="not an exact pin"):
        deps.read_pins(bad)
    bad.write_text('numpy==2.0.2 ; platform_system == "Windows"\n')
    with pytest.raises(ValueError, match="unsupported environment marker"):
        deps.read_pins(bad)


def test_nothing_missing_nothing_to_install():
    plan = plan_for()
    assert plan.ok and plan.missing == [] and plan.install == [] and plan.blocked == []


def test_an_optional_package_is_offered_never_required():
    plan = plan_for(pybase64=None)
    assert plan.ok and plan.missing == [] and plan.summary() == ""
    assert [p.spec for p in plan.install] == ["pybase64==1.5.1"]
    assert plan.faster_text() == "pybase64 (faster tensor requests)"
    assert deps.modules_of(plan.install) == ["pybase64"]


def test_a_missing_package_is_installed_with_the_optional_one():
    plan = plan_for(rasterio=None, pybase64=None)
    assert not plan.ok and plan.summary() == "rasterio (missing)"
    assert [p.spec for p in plan.install] == ["rasterio==1.4.4", "pybase64==1.5.1"]
    assert deps.modules_of(plan.install) == ["rasterio", "pybase64"]
    blocked = plan_for(numpy="1.21.5", rasterio=None, pybase64=None)  # installing cannot fix it: nothing installed
    assert blocked.blocked and blocked.install == [] and blocked.faster == []


def test_missing_rasterio_installs_rasterio_only():
    plan = plan_for(rasterio=None)
    assert plan.missing == ["rasterio"]
    assert [p.spec for p in plan.install] == ["rasterio==1.4.4"]
    assert plan.summary() == "rasterio (missing)"


def test_missing_everything_installs_the_whole_closure():
    plan = deps.check(python=(3, 9), find=finder({}))
    assert plan.missing == ["numpy", "rasterio", "requests"]
    assert {p.spec for p in plan.install} >= {"numpy==2.0.2", "rasterio==1.4.1", "requests==2.32.5", "urllib3==2.5.0",
                                              "affine==2.4.0", "certifi==2026.10.19.post1"}
    assert len({p.name for p in plan.install}) == len(plan.install), "each distribution once"
    assert plan.summary().count("numpy") == 1


def test_numpy_qgis_has_is_never_replaced():
    plan = plan_for(numpy="1.26.4", rasterio=None)
    assert "numpy" not in [p.name for p in plan.install]
    plan = plan_for(numpy="1.21.5", rasterio=None)  # older than the pinned rasterio wheels read
    assert plan.install == [] and plan.blocked and "does not replace the numpy QGIS is built with" in plan.blocked[0]
    error = deps.explain(plan, "/p", "cmd")
    assert "Installing cannot fix this" in str(error) and "numpy 1.21.5" in str(error)


def test_too_old_urllib3_is_replaced_but_not_the_rest():
    plan = plan_for(urllib3="1.26.12")
    assert plan.missing == ["requests"]
    assert [p.spec for p in plan.install] == ["urllib3==2.5.0"]
    assert plan.summary() == "urllib3 1.26.12 (needs >= 2.0)"
    plan = plan_for(requests="2.28.1", urllib3="1.26.12")  # Debian bookworm's python3-requests
    assert [p.spec for p in plan.install] == ["requests==2.32.5", "urllib3==2.5.0"]


def test_affine_3_is_replaced():
    plan = plan_for(affine="3.0.1")
    assert [p.spec for p in plan.install] == ["affine==2.4.0"]
    assert plan.summary() == "affine 3.0.1 (needs >= 2.3 and < 3)"


def test_rasterio_1_5_takes_affine_3_and_needs_no_cligj():
    """Debian's python3-rasterio 1.5 (sid): affine 3, neither cligj nor click-plugins."""
    plan = plan_for(rasterio="1.5.2", affine="3.0.1", cligj=None, **{"click-plugins": None})
    assert plan.ok, plan.summary()
    assert plan_for(rasterio="1.5.2", affine="2.4.0").ok
    plan = plan_for(rasterio="1.5.2", affine=None)
    assert [p.spec for p in plan.install] == ["affine==2.4.0"]


def test_rasterio_1_4_or_its_replacement_still_needs_what_1_4_needs():
    plan = plan_for(rasterio="1.4.4", cligj=None)
    assert [p.spec for p in plan.install] == ["cligj==0.7.2"]
    plan = plan_for(rasterio="1.3.9", affine="3.0.1")  # replaced by the pinned 1.4.4, which needs affine < 3
    assert [p.spec for p in plan.install] == ["rasterio==1.4.4", "affine==2.4.0"]
    plan = plan_for(rasterio=None, cligj=None)
    assert {p.spec for p in plan.install} == {"rasterio==1.4.4", "cligj==0.7.2"}


def test_unknown_version_is_trusted():
    assert plan_for(urllib3="").ok


def test_explain_names_the_problem_and_both_fixes():
    plan = plan_for(rasterio=None, requests=None)
    text = str(deps.explain(plan, "/profile/floodmapper/python3.11-linux-x86_64", "python -m pip install X"))
    assert "rasterio (missing), requests (missing)" in text
    assert "click Install" in text and "python -m pip install X" in text and "restart QGIS" in text
    assert "/profile/floodmapper/python3.11-linux-x86_64" in text


# --- probing the real interpreter -------------------------------------------------------------------------------

def _fake_distribution(root: Path, name: str, version: str, body: str = "") -> None:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(body)
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_probe_finds_without_importing_and_reads_the_version_beside_it(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "fmfakepkg", "1.2.3", body="raise RuntimeError('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = deps.probe(deps.Requirement("fmfakepkg", "fmfakepkg"))
    assert found == deps.Found(str(tmp_path), "1.2.3")
    assert "fmfakepkg" not in sys.modules
    assert deps.import_failures(("fmfakepkg",)) == {"fmfakepkg": f"RuntimeError: imported! (the copy in {tmp_path})"}
    assert deps.probe(deps.Requirement("fmnosuchpkg", "fmnosuchpkg")) is None


def test_probe_sees_a_blocked_module_as_missing_unless_in_the_allowed_folder(tmp_path, monkeypatch):
    _fake_distribution(tmp_path / "elsewhere", "fmblocked", "1.0")
    _fake_distribution(tmp_path / "profile" / "pkgs", "fmblocked2", "2.0")
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    monkeypatch.syspath_prepend(str(tmp_path / "profile" / "pkgs"))
    monkeypatch.setattr(sys, "meta_path", [ImportBlocker({"fmblocked", "fmblocked2"}, [tmp_path / "profile"]),
                                           *sys.meta_path])
    assert deps.probe(deps.Requirement("fmblocked", "fmblocked")) is None
    assert deps.probe(deps.Requirement("fmblocked2", "fmblocked2")).version == "2.0"


# --- the folder ----------------------------------------------------------------------------------------------------

def test_folder_is_per_python_and_platform_inside_the_profile(tmp_path):
    assert folder_name((3, 12), "win-amd64") == "python3.12-win-amd64"
    assert folder_for(tmp_path, (3, 9), "macosx-11.0-arm64") == tmp_path / "floodmapper" / "python3.9-macosx-11.0-arm64"


def test_activate_puts_an_existing_folder_first_once(tmp_path):
    path = ["/usr/lib/python3/dist-packages"]
    assert not activate(tmp_path / "missing", path)
    assert activate(tmp_path, path) and path[0] == str(tmp_path)
    assert not activate(tmp_path, path) and path.count(str(tmp_path)) == 1


def test_imported_elsewhere_needs_a_restart(tmp_path):
    loaded = {"urllib3": types.SimpleNamespace(__file__="/usr/lib/python3/dist-packages/urllib3/__init__.py"),
              "rasterio": types.SimpleNamespace(__file__=str(tmp_path / "rasterio" / "__init__.py"))}
    assert imported_elsewhere(["urllib3", "rasterio", "requests"], tmp_path, loaded) == ["urllib3"]


def test_modules_of_the_installed_pins():
    plan = plan_for(requests="2.28.1", urllib3="1.26.12", affine="3.0.1")
    assert deps.modules_of(plan.install) == ["affine", "requests", "urllib3"]
