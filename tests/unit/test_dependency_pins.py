"""Every pin of requirements/plugin.txt has a wheel for the Pythons and platforms QGIS users run, as the Install
button asks for it (--no-deps --only-binary=:all:); pip resolves against the index without installing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from plugin.core import dependencies as deps

LINUX_X86 = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
LINUX_ARM = ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"]
TARGETS = [  # (python, platforms): QGIS's Windows installers, the macOS bundles, Linux distributions
    ((3, 9), ["win_amd64"]), ((3, 12), ["win_amd64"]),
    ((3, 9), ["macosx_14_0_arm64"]), ((3, 12), ["macosx_15_0_x86_64"]),
    ((3, 10), LINUX_X86), ((3, 12), LINUX_ARM), ((3, 13), LINUX_X86), ((3, 14), LINUX_X86),
]  # each pin's markers pick per Python: 3.9, 3.10 and 3.11+ (3.11 itself is what the other tests install)


@pytest.mark.parametrize("python, platforms", TARGETS, ids=[f"py{p[0]}.{p[1]}-{pl[0]}" for p, pl in TARGETS])
def test_every_pin_has_a_wheel(python, platforms, tmp_path):
    pins = deps.pins_for(python)
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--target", str(tmp_path), "--implementation", "cp",
           "--python-version", f"{python[0]}.{python[1]}"]
    for platform in platforms:
        cmd += ["--platform", platform]
    proc = subprocess.run(cmd + [p.spec for p in pins.values()], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    would = next(line for line in proc.stdout.splitlines() if line.startswith("Would install"))
    assert sorted(would.split()[2:]) == sorted(f"{p.name}-{p.version}" for p in pins.values())
