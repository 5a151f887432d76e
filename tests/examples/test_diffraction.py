"""The demo's synthetic images: the spot finder finds what the detector drew, and the PGM
files read back as written (bad ones refused in one line)."""

from __future__ import annotations

import pytest

from zocalo.examples.diffraction import (
    Image,
    NotAnImage,
    draw,
    find_spots,
    image_path,
    read_pgm,
    write_pgm,
)


def test_the_spot_finder_finds_every_spot_the_detector_drew():
    drawn_and_found = [(drawn, find_spots(image)) for image, drawn in map(draw, range(150))]
    assert all(found == drawn for drawn, found in drawn_and_found), drawn_and_found
    assert len({drawn for drawn, _ in drawn_and_found}) > 10, "images differ in their spots"


def test_an_image_is_the_same_for_the_same_seed_and_differs_for_another():
    assert draw("1001:7") == draw("1001:7")
    assert draw("1001:7")[0].pixels != draw("1001:8")[0].pixels


def test_an_empty_image_has_no_spots():
    assert find_spots(Image(8, 8, bytes([20] * 64))) == 0


def test_a_pgm_file_reads_back_as_written(tmp_path):
    image, _ = draw("round trip")
    path = tmp_path / "image_00001.pgm"
    write_pgm(path, image)
    assert read_pgm(path) == image
    assert path.read_bytes().startswith(b"P5\n64 64\n255\n")
    assert [p.name for p in tmp_path.iterdir()] == ["image_00001.pgm"], "no partial file left"


def test_a_pgm_header_may_carry_comments(tmp_path):
    path = tmp_path / "commented.pgm"
    path.write_bytes(b"P5\n# from a detector\n2 2\n# 8 bits\n255\n\x01\x02\x03\x04")
    assert read_pgm(path) == Image(2, 2, b"\x01\x02\x03\x04")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"P2\n2 2\n255\n1 2 3 4", "is not a binary PGM image"),
        (b"P5\n2 2\n65535\n" + bytes(8), "8-bit images only"),
        (b"P5\n2 2\n255\n\x01\x02", "make 4 bytes, not 2"),
        (b"P5\n2", "ends inside its PGM header"),
    ],
)
def test_a_file_that_is_no_8_bit_pgm_is_refused_saying_why(tmp_path, content, reason):
    path = tmp_path / "bad.pgm"
    path.write_bytes(content)
    with pytest.raises(NotAnImage, match=reason) as refused:
        read_pgm(path)
    assert "\n" not in str(refused.value)


def test_an_image_file_is_named_by_its_template():
    assert image_path("/data/dc1", "image_#####.pgm", 7).as_posix() == "/data/dc1/image_00007.pgm"
    with pytest.raises(ValueError, match="one run of '#'"):
        image_path("/data", "image_##_##.pgm", 7)
