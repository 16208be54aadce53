"""The zip `make package` builds passes the checks plugins.qgis.org runs on an upload.

`upload_problems` reproduces the upload validation of QGIS-Django, the application behind plugins.qgis.org (its
plugin package validator, the upload form's version clean-up and the database fields' limits), check by check,
plus the site's publishing rule that a plugin carries no compiled binaries. What it cannot do offline is
the site's HEAD request to the homepage, tracker and repository URLs (they must answer below 400); those
are placeholders until the project is published, so only their form is checked here.

The same checks also run on damaged copies of the real zip, so each one is shown to fail when it should.
"""

from __future__ import annotations

import codecs
import configparser
import io
import os
import re
import subprocess
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "floodmapper"

MAX_UPLOAD_SIZE = 25_000_000  # PLUGIN_MAX_UPLOAD_SIZE
REQUIRED_METADATA = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about",
                     "tracker", "repository")
BOOLEAN_METADATA = ("experimental", "deprecated", "server")
FORBIDDEN_DIRS = ("__MACOSX", ".git", "__pycache__")
FORBIDDEN_URLS = {"tracker": "http://bugs", "repository": "http://repo", "homepage": "http://homepage"}
# compiled code: by name, and by the first bytes of ELF, PE (MZ) and Mach-O (32/64 bit, fat) files
BINARY_SUFFIXES = (".so", ".dll", ".dylib", ".pyd", ".exe", ".pyc", ".pyo", ".o", ".a", ".lib")
BINARY_MAGIC = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xfe\xed\xfa\xce",
                b"\xca\xfe\xba\xbe")
EMAIL = re.compile(r"^[^@\s/]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
QGIS_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?$")


def vjust(text: str, level: int = 3, delim: str = ".", bitsize: int = 3, fillchar: str = " ",
          force_zero: bool = False) -> str:
    """The site's sortable form of a version (models.vjust), which must fit its 32-character fields."""
    if not text:
        return text
    nb = text.count(delim)
    if nb < level:
        text += (level - nb) * (delim + "0") if force_zero else (level - nb) * delim
    return delim.join(v.rjust(bitsize, "#") if not v else v.rjust(bitsize, fillchar)
                      for v in text.split(delim)[: level + 1])


def is_pe(head: bytes) -> bool:
    if not head.startswith(b"MZ") or len(head) < 64:
        return False
    offset = int.from_bytes(head[0x3C:0x40], "little")
    return head[offset:offset + 4] == b"PE\0\0" if offset + 4 <= len(head) else False


def upload_problems(zip_bytes: bytes, is_new: bool = True) -> list[str]:
    """Every reason plugins.qgis.org would refuse this zip (empty: accepted)."""
    problems: list[str] = []
    if len(zip_bytes) > MAX_UPLOAD_SIZE:
        problems.append(f"too big: {len(zip_bytes)} bytes > {MAX_UPLOAD_SIZE}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(zip_bytes))
    except zipfile.BadZipFile:
        return problems + ["could not unzip"]
    names = zf.namelist()
    for name in names:
        if ".." in name or name.startswith(("/", os.path.sep)):
            problems.append(f"path information in {name}")
        if ".pyc" in name:
            problems.append(f".pyc file {name}")
        for forbidden in FORBIDDEN_DIRS:
            if forbidden in name.split("/"):
                problems.append(f"forbidden directory {forbidden} in {name}")
        if name.endswith(BINARY_SUFFIXES):
            problems.append(f"compiled binary (by name) {name}")
        elif not name.endswith("/"):
            head = zf.read(name)[:4096]
            if head.startswith(BINARY_MAGIC) or is_pe(head):
                problems.append(f"compiled binary (by content) {name}")
    bad = zf.testzip()
    if bad:
        problems.append(f"bad zip entry {bad}")
    parents = {name.split("/")[0] for name in names}
    if len(parents) != 1:
        problems.append(f"more than one top folder: {sorted(parents)}")  # the site warns; QGIS installs one
    if not names or "/" not in names[0]:
        return problems + ["no folder inside the zip"]
    package = names[0][: names[0].index("/")]
    if is_new and not re.match(r"^[a-z_][a-z0-9_]*$", package):
        problems.append(f"top folder {package!r} is not PEP 8 compliant")
    if not re.match(r"^[A-Za-z][A-Za-z0-9-_]+$", package):
        problems.append(f"top folder {package!r} has characters the site refuses")
    if package != PACKAGE:
        problems.append(f"top folder {package!r} is not the package name {PACKAGE!r}")
    init, meta_name, licence = f"{package}/__init__.py", f"{package}/metadata.txt", f"{package}/LICENSE"
    for required in (init, meta_name, licence):
        if required not in names:
            problems.append(f"missing {required}")
    if meta_name not in names:
        return problems
    parser = configparser.ConfigParser()  # the site's parser: interpolation on, so a bare % is an error
    parser.optionxform = str
    try:
        parser.read_file(io.StringIO(codecs.decode(zf.read(meta_name), "utf8")))
        metadata = dict(parser.items("general"))
    except (configparser.Error, UnicodeDecodeError) as exc:
        return problems + [f"metadata.txt does not parse: {exc}"]
    for key in REQUIRED_METADATA:
        if not metadata.get(key, "").strip():
            problems.append(f"metadata {key} missing or empty")
    for key in BOOLEAN_METADATA:
        if key in metadata and metadata[key].strip().lower() not in ("true", "false", "1", "0"):
            problems.append(f"metadata {key}={metadata[key]!r} is not a boolean")
    icon = metadata.get("icon", "")
    icon = icon[2:] if icon.startswith("./") else icon
    if not icon or f"{package}/{icon}" not in names:
        problems.append(f"icon {icon!r} is not in the zip")
    if "/" in metadata.get("author", "/"):
        problems.append("author contains a slash")
    if not EMAIL.match(metadata.get("email", "")):
        problems.append(f"email {metadata.get('email')!r} is not an address")
    version = metadata.get("version", "")
    version = version.rsplit(" ")[-1] if version.rfind(" ") > 0 else version  # PluginVersion.clean_version
    if not re.match(r"^\d+(\.\d+)*", version) or len(vjust(version, fillchar="0")) > 32:
        problems.append(f"version {version!r} does not fit the site's version field")
    for key in ("qgisMinimumVersion", "qgisMaximumVersion"):
        value = metadata.get(key, "")
        if key in metadata or key == "qgisMinimumVersion":
            if not QGIS_VERSION.match(value) or len(vjust(value, fillchar="0", level=2, force_zero=True)) > 32:
                problems.append(f"{key} {value!r} is not a QGIS version")
    if QGIS_VERSION.match(metadata.get("qgisMinimumVersion", "")) and \
            tuple(metadata["qgisMinimumVersion"].split(".")) < ("1", "8"):
        problems.append("qgisMinimumVersion below 1.8 needs metadata in __init__.py")
    for key, forbidden in FORBIDDEN_URLS.items():
        url = metadata.get(key)
        if key == "homepage" and url is None:
            continue
        parsed = urlparse(url or "")
        if url == forbidden or not (parsed.scheme and parsed.netloc):
            problems.append(f"{key} {url!r} is not a valid URL")
    for key in ("name", "author"):
        if len(metadata.get(key, "")) > 256:
            problems.append(f"{key} longer than 256 characters")
    return problems


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(["make", "--no-print-directory", "package", f"DIST={dist}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (zip_path,) = dist.glob(f"{PACKAGE}-*.zip")
    return zip_path


def test_make_package_zip_passes_the_upload_checks(built_zip):
    data = built_zip.read_bytes()
    assert upload_problems(data) == []
    with zipfile.ZipFile(built_zip) as zf:
        licence = zf.read(f"{PACKAGE}/LICENSE").decode()
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str
        parser.read_string(zf.read(f"{PACKAGE}/metadata.txt").decode())
    assert licence == (ROOT / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in licence and "Version 2, June 1991" in licence
    assert "either version 2 of the License" in licence and "any later version" in licence
    about = parser["general"]["about"]
    for dependency in ("numpy", "rasterio", "requests"):
        assert dependency in about, f"the about text does not name {dependency}"
    assert "separate Python environment" in about and "vLLM" in about
    assert f"{PACKAGE}/requirements/plugin.txt" in zf_names(built_zip), "the pinned dependencies travel with it"


def _rewritten(src: Path, drop: str = "", add: dict[str, bytes] | None = None,
               replace: dict[str, bytes] | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            if item.filename == drop:
                continue
            zout.writestr(item, (replace or {}).get(item.filename, zin.read(item)))
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize("change, expected", [
    ({"drop": f"{PACKAGE}/LICENSE"}, "missing floodmapper/LICENSE"),
    ({"add": {f"{PACKAGE}/plugin/__pycache__/x.cpython-311.pyc": b"\x00"}}, "forbidden directory __pycache__"),
    ({"add": {f"{PACKAGE}/plugin/fast.so": b"\x7fELF\x02\x01\x01"}}, "compiled binary (by name)"),
    ({"add": {f"{PACKAGE}/resources/helper": b"\x7fELF\x02\x01\x01" + bytes(64)}}, "compiled binary (by content)"),
    ({"add": {"other/README": b"x"}}, "more than one top folder"),
    ({"replace": {f"{PACKAGE}/metadata.txt": b"[general]\nname=Flood Mapper\nversion=1.0\n"}}, "metadata about"),
    ({"replace": {f"{PACKAGE}/metadata.txt": b"[general]\nname=50% flood\n"}}, "does not parse"),
])
def test_the_checks_refuse_a_damaged_zip(built_zip, change, expected):
    problems = upload_problems(_rewritten(built_zip, **change))
    assert any(expected in p for p in problems), problems


def test_size_limit_is_checked(built_zip):
    padded = built_zip.read_bytes() + bytes(MAX_UPLOAD_SIZE)  # trailing bytes: still a readable zip
    assert any(p.startswith("too big") for p in upload_problems(padded))


def zf_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()
