"""Micrograph reading, grey/intensity rules, cropping, patching, and the bad-input corpus."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from matrep.errors import BadInputError
from matrep.io import (apply_crop, extract_patches, list_images, load_patches, read_micrograph,
                       to_grey, to_unit_float)


def test_uint8_png_roundtrip(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (40, 50), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    img = read_micrograph(tmp_path / "a.png")
    assert img.dtype == np.float32 and img.shape == (40, 50)
    np.testing.assert_allclose(img, a / 255.0, atol=1e-7)


def test_uint16_tiff_scaled_by_dtype_max(tmp_path):
    a = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", a)
    img = read_micrograph(tmp_path / "a.tif")
    np.testing.assert_allclose(img, a / 65535.0, rtol=1e-6)


def test_uint16_png(tmp_path):
    a = np.array([[0, 65535], [12345, 40000]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "a.png")
    np.testing.assert_allclose(read_micrograph(tmp_path / "a.png"), a / 65535.0, rtol=1e-6)


def test_float_tiff_rules(tmp_path):
    inside = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    tifffile.imwrite(tmp_path / "in.tif", inside)
    np.testing.assert_array_equal(read_micrograph(tmp_path / "in.tif"), inside)
    outside = np.array([[-2.0, 0.0], [2.0, 6.0]], np.float32)
    tifffile.imwrite(tmp_path / "out.tif", outside)
    np.testing.assert_allclose(read_micrograph(tmp_path / "out.tif"), [[0, 0.25], [0.5, 1]])


def test_rgb_to_grey_uses_bt601_luma():
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    assert to_grey(rgb).tolist() == [[76, 150, 29]]


def test_rgba_png_drops_alpha(tmp_path):
    a = np.zeros((20, 20, 4), np.uint8)
    a[..., 0] = 200
    a[..., 1] = 100
    a[..., 2] = 50
    a[..., 3] = 255
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    img = read_micrograph(tmp_path / "rgba.png")
    expected = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_bmp_and_jpeg(tmp_path):
    a = np.full((16, 16), 128, np.uint8)
    Image.fromarray(a).save(tmp_path / "a.bmp")
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    assert read_micrograph(tmp_path / "a.bmp").shape == (16, 16)
    assert abs(read_micrograph(tmp_path / "a.jpg").mean() - 128 / 255) < 0.01


def test_unit_float_rules():
    assert to_unit_float(np.array([True, False])).tolist() == [1.0, 0.0]
    np.testing.assert_allclose(to_unit_float(np.array([-32768, 32767], np.int16)), [0, 1])
    assert to_unit_float(np.full((2, 2), 5.0)).max() == 0.0


def test_extract_patches_matches_slicing():
    img = np.random.default_rng(0).random((300, 260)).astype(np.float32)
    p, c = extract_patches(img, 128, 50)
    assert p.shape == (len(c), 128, 128)
    assert len(c) == len(range(0, 300 - 127, 50)) * len(range(0, 260 - 127, 50))
    for patch, (y, x) in zip(p, c):
        np.testing.assert_array_equal(patch, img[y:y + 128, x:x + 128])


def test_crop_bottom_and_box():
    img = np.arange(100 * 80, dtype=np.float32).reshape(100, 80)
    out = apply_crop(img, (5, 10, 50, 60), crop_bottom=38)
    np.testing.assert_array_equal(out, img[:62][5:55, 10:70])
    with pytest.raises(BadInputError, match="does not fit"):
        apply_crop(img, (0, 0, 100, 80), crop_bottom=38)


# ----------------------------------------------------------------------------- bad input
def _corpus(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    good = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(good).save(d / "good.png")
    raw = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(raw[: len(raw) // 2])
    (d / "text.png").write_text("this is not an image\n")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(d / "tiny.png")
    nan = np.ones((64, 64), np.float32)
    nan[3, 4] = np.nan
    tifffile.imwrite(d / "nan.tif", nan)
    return d


@pytest.mark.parametrize("name, message", [
    ("truncated.png", "truncated.png: corrupt image (truncated image file)"),
    ("text.png", "text.png: not an image (unrecognised file content)"),
    ("tiny.png", "tiny.png: image of 1x1 pixels is smaller than the 32x32 patch"),
    ("nan.tif", "nan.tif: float image contains NaN values"),
])
def test_bad_input_corpus_messages(tmp_path, name, message):
    d = _corpus(tmp_path)
    with pytest.raises(BadInputError) as exc:
        load_patches(d / name, patch=32, stride=32)
    assert message in str(exc.value)
    assert str(exc.value).startswith(str(d / name))
    assert "\n" not in str(exc.value)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match=r"empty: no images found"):
        list_images(tmp_path / "empty")


def test_skip_bad_lists_what_was_skipped(tmp_path):
    d = _corpus(tmp_path)
    ps = load_patches(d, patch=32, stride=32, skip_bad=True)
    assert set(ps.micrograph_ids) == {"good"}
    assert sorted(s.split("/")[-1] for s, _ in ps.skipped) == [
        "nan.tif", "text.png", "tiny.png", "truncated.png"]


def test_patch_records(tmp_path):
    for i in range(2):
        Image.fromarray(np.full((100, 150), 50 * i, np.uint8)).save(tmp_path / f"m{i}.png")
    ps = load_patches(tmp_path, patch=64, stride=36)
    assert len(ps) == 2 * 2 * 3
    assert ps.micrograph_ids.tolist()[:6] == ["m0"] * 6
    assert ps.coords[:3].tolist() == [[0, 0], [0, 36], [0, 72]]
    assert ps.files == [str(tmp_path / "m0.png"), str(tmp_path / "m1.png")]


def test_real_uhcs_crop(uhcs_dir):
    f = sorted((uhcs_dir / "images").glob("*.png"))[0]
    img = read_micrograph(f)
    assert img.shape == (522, 645)
    ps = load_patches(f, crop_bottom=38)
    assert ps.coords[:, 0].max() + 128 <= 484


def test_real_castiron_jpeg_colour(castiron_dir):
    ps = load_patches(castiron_dir, patch=128, stride=400)
    assert len(set(ps.micrograph_ids)) == 6
    assert 0.0 <= ps.patches.min() and ps.patches.max() <= 1.0


# ----------------------------------------------------------------------------- size limit
def _png_claiming(width, height):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_decompression_bomb_refused_from_the_header(tmp_path, monkeypatch):
    """A 60-byte PNG claiming 100000² pixels: refused before decoding, with the pixel count and
    the variable that raises the limit (issue 16)."""
    monkeypatch.delenv("MATREP_MAX_IMAGE_PIXELS", raising=False)
    f = tmp_path / "bomb.png"
    f.write_bytes(_png_claiming(100_000, 100_000))
    with pytest.raises(BadInputError) as exc:
        read_micrograph(f)
    assert str(exc.value) == (
        f"{f}: image header claims 100000x100000 = 10,000,000,000 pixels, more than the limit of "
        "178,956,970 (a decompression bomb?); if the image is real, raise the limit with "
        "MATREP_MAX_IMAGE_PIXELS=10000000000")


def test_pixel_limit_follows_the_environment(tmp_path, monkeypatch, caplog):
    a = np.zeros((40, 50), np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", a)
    monkeypatch.setenv("MATREP_MAX_IMAGE_PIXELS", "1999")
    for name in ("a.png", "a.tif"):
        with pytest.raises(BadInputError, match=r"claims 50x40 = 2,000 pixels, more than the limit of 1,999"):
            read_micrograph(tmp_path / name)
    monkeypatch.setenv("MATREP_MAX_IMAGE_PIXELS", "2000")
    assert read_micrograph(tmp_path / "a.tif").shape == (40, 50)
    monkeypatch.setenv("MATREP_MAX_IMAGE_PIXELS", "0")  # no limit
    assert read_micrograph(tmp_path / "a.png").shape == (40, 50)
    monkeypatch.setenv("MATREP_MAX_IMAGE_PIXELS", "-3")
    with pytest.raises(BadInputError, match="MATREP_MAX_IMAGE_PIXELS must be a number of pixels"):
        read_micrograph(tmp_path / "a.png")


def _tiff_with_bad_tag(width, height):
    """A one-strip grey TIFF with an extra tag of the invalid data type 99 (tifffile logs it)."""
    import struct

    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, None), (277, 3, 1), (278, 4, height), (279, 4, 16), (700, 99, 5)]
    at = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\0" + struct.pack("<IH", 8, len(tags))
    for tag, typ, val in tags:
        val = at if val is None else val
        out += struct.pack("<HHI", tag, typ, 1) + (struct.pack("<HH", val, 0) if typ == 3
                                                    else struct.pack("<I", val))
    return out + struct.pack("<I", 0) + b"\0" * 16


def test_tifffile_log_lines_stay_out_of_the_output(tmp_path, caplog):
    """tifffile logs an error about the bad tag; matrep's one-line error replaces it, in every
    place that opens a TIFF (pixel size, image size, pixels) (issue 16)."""
    import logging

    from click.testing import CliRunner

    from matrep.cli import main

    f = tmp_path / "odd.tif"
    f.write_bytes(_tiff_with_bad_tag(30000, 30000))
    with caplog.at_level(logging.DEBUG, logger="tifffile"):
        res = CliRunner().invoke(main, ["encode", "--method", "twopoint", "--images", str(f),
                                        "--out", str(tmp_path / "f.h5"), "-q"])
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [f"Error: {f}: image header claims 30000x30000 = "
                                       "900,000,000 pixels, more than the limit of 178,956,970 "
                                       "(a decompression bomb?); if the image is real, raise the "
                                       "limit with MATREP_MAX_IMAGE_PIXELS=900000000"]
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]
    import tifffile as tf  # the file really makes tifffile log (else this test proves nothing)

    with caplog.at_level(logging.DEBUG, logger="tifffile"):
        tf.TiffFile(str(f)).close()
    assert [r for r in caplog.records if r.name.startswith("tifffile")]


def test_links_and_folders_named_like_images(tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(BadInputError, match="loop.png: is a broken symbolic link"):
        list_images(loop)
    with pytest.raises(BadInputError, match="loop.png: is a broken symbolic link"):
        read_micrograph(loop)
    (tmp_path / "d.png").mkdir()
    with pytest.raises(BadInputError, match="d.png: is a folder, not an image file"):
        read_micrograph(tmp_path / "d.png")


def test_cli_warning_is_one_line_without_source(tmp_path):
    """The alpha warning reaches the terminal as one 'warning:' line, not with a Python source
    line under it (issue 16)."""
    from click.testing import CliRunner

    from matrep.cli import main

    a = np.zeros((32, 32, 4), np.uint8)
    a[..., 3] = 128
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    res = CliRunner().invoke(main, ["encode", "--method", "twopoint", "--images",
                                    str(tmp_path / "rgba.png"), "--patch", "16", "--stride", "16",
                                    "--out", str(tmp_path / "f.h5"), "-q"])
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines() == [
        f"warning: {tmp_path / 'rgba.png'}: alpha channel is not opaque; it is ignored"]
