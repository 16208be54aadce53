"""Files inside a .tar or .zip named as GDAL names them: found, read, and told apart from ordinary paths."""

from __future__ import annotations

import tarfile
import zipfile

import pytest

from plugin.core.archive_members import folder_of, is_file, join, read_text, split_member


@pytest.fixture
def archives(tmp_path):
    (tmp_path / "scene_MTL.txt").write_text("SUN_ELEVATION = 58.25\n")
    with tarfile.open(tmp_path / "scene.tar", "w") as t:
        t.add(tmp_path / "scene_MTL.txt", arcname="scene_MTL.txt")
        t.add(tmp_path / "scene_MTL.txt", arcname="./dotted_MTL.txt")
    with zipfile.ZipFile(tmp_path / "scene.zip", "w") as z:
        z.write(tmp_path / "scene_MTL.txt", arcname="scene/GRANULE/scene_MTL.txt")
    return tmp_path


def test_members_of_a_tar_and_a_zip_are_found_and_read(archives):
    tar = f"/vsitar/{archives}/scene.tar"
    assert split_member(f"{tar}/scene_MTL.txt") == ("tar", f"{archives}/scene.tar", "scene_MTL.txt")
    assert is_file(f"{tar}/scene_MTL.txt") and is_file(f"{tar}/dotted_MTL.txt")
    assert read_text(f"{tar}/scene_MTL.txt") == "SUN_ELEVATION = 58.25\n"
    member = f"/vsizip/{archives}/scene.zip/scene/GRANULE/scene_MTL.txt"
    assert is_file(member) and read_text(member).startswith("SUN_ELEVATION")
    braces = f"/vsizip/{{{archives}/scene.zip}}/scene/GRANULE/scene_MTL.txt"
    assert split_member(braces) == ("zip", f"{archives}/scene.zip", "scene/GRANULE/scene_MTL.txt")
    assert read_text(braces).startswith("SUN_ELEVATION")


def test_the_folder_of_a_member_stays_inside_its_archive(archives):
    band = f"/vsitar/{archives}/scene.tar/scene_B5.TIF"
    assert folder_of(band) == f"/vsitar/{archives}/scene.tar"
    assert join(folder_of(band), "scene_MTL.txt") == f"/vsitar/{archives}/scene.tar/scene_MTL.txt"
    assert folder_of(str(archives / "scene_B5.TIF")) == str(archives)
    assert join(str(archives), "scene_MTL.txt") == str(archives / "scene_MTL.txt")


def test_what_is_not_a_member_of_a_local_archive(archives):
    assert split_member(str(archives / "scene_MTL.txt")) is None  # an ordinary file
    assert split_member(f"/vsitar/{archives}/elsewhere.tar/scene_MTL.txt") is None  # no such archive
    assert split_member("/vsicurl/https://example.com/scene.tar") is None
    assert not is_file(f"/vsitar/{archives}/scene.tar/scene_B5.TIF")
    assert not is_file(f"/vsizip/{archives}/scene.zip/scene_MTL.txt")  # it is in a folder of the zip
    with pytest.raises(OSError, match="no file scene_B5.TIF"):
        read_text(f"/vsitar/{archives}/scene.tar/scene_B5.TIF")
    with pytest.raises(OSError, match="no file"):
        read_text(f"/vsizip/{archives}/scene.zip/scene_MTL.txt")
    (archives / "broken.zip").write_bytes(b"not a zip")
    assert not is_file(f"/vsizip/{archives}/broken.zip/scene_MTL.txt")
    with pytest.raises(OSError, match="broken.zip"):
        read_text(f"/vsizip/{archives}/broken.zip/scene_MTL.txt")
