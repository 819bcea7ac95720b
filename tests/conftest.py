"""Shared fixtures: the real micrographs in ../shared/data (never copied into the repo), the
study tests' labelled images and plugins, and the switches that keep tests offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never download anything: the library reads this documented switch (matrep.weights),
# it never asks whether pytest is running.
os.environ["MATREP_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MATREP_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dir(name: str) -> Path:
    """A folder of ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real micrographs not available: {path} is absent "
                    "(set MATREP_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture
def castiron_dir() -> Path:
    return shared_dir("castiron_ductile") / "images"


@pytest.fixture
def uhcs_dir() -> Path:
    return shared_dir("uhcs")


@pytest.fixture
def li2018_dir() -> Path:
    return shared_dir("li2018_segmented")


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """The example ``histogram`` plugin and the ``spy`` encoder (tests/study_utils.py),
    registered for one test."""
    from study_utils import install_plugins

    from matrep import registry

    install_plugins(tmp_path / "plugins", monkeypatch)
    yield
    registry.refresh()


@pytest.fixture
def dataset(tmp_path):
    """A small labelled image folder (:func:`study_utils.make_dataset`: a numeric ``modulus``,
    two ``phase`` classes, ``sample`` pairs). A test module may define its own ``dataset``."""
    from study_utils import make_dataset

    return make_dataset(tmp_path / "data")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep matrep's cache (converted weights, datasets) out of the user's home in tests,
    but shared across the session so expensive conversions happen once."""
    if "MATREP_CACHE" not in os.environ:
        monkeypatch.setenv("MATREP_CACHE", str(tmp_path_factory.getbasetemp() / "matrep-cache"))


@pytest.fixture
def one_torch_thread():
    """Run a torch test on one thread (tests stay fast and deterministic on shared cores)."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
