"""Package surface: public exports, ``info()``, and the optional extension's messages when it is
missing or does not load (the build is optional: ``import decinv_fast`` must work either way)."""

from __future__ import annotations

import importlib.machinery
import sys

import pytest
import torch

import decinv_fast
from decinv_fast import _extension
from decinv_fast._dispatch import backend_problem


@pytest.fixture
def fresh_extension_load(monkeypatch):
    """``_extension`` loads again in the test (its result is cached per process), and again after it."""
    monkeypatch.delitem(sys.modules, "decinv_fast._C", raising=False)
    monkeypatch.delattr(decinv_fast, "_C", raising=False)
    _extension._load.cache_clear()
    yield
    _extension._load.cache_clear()


def test_missing_extension_says_it_is_not_built_and_how_to_build_it(monkeypatch, fresh_extension_load, tiny_kl,
                                                                    images_32):
    """Where setup.py found no nvcc the message was Python's 'cannot import name _C', saying neither
    that the build is optional nor how to make it."""
    monkeypatch.setitem(sys.modules, "decinv_fast._C", None)  # as if no _C*.so were installed
    assert _extension.extension() is None
    error = _extension.extension_error()
    assert error.startswith("not built: setup.py builds it where nvcc and a CUDA build of torch are present")
    assert "DECINV_BUILD_CUDA=1 pip install --no-build-isolation -e ." in error
    assert "ModuleNotFoundError" in error  # the original error is kept
    assert backend_problem("cuda", torch.zeros(1)) == f"the compiled extension decinv_fast._C is unavailable: {error}"
    with pytest.raises(decinv_fast.BackendUnavailable, match="unavailable: not built: setup.py builds it"):
        decinv_fast.invert(tiny_kl, images_32, steps=1, backend="cuda")


def test_stale_extension_says_rebuild(monkeypatch, tmp_path, fresh_extension_load):
    """A ``_C`` that exists but does not load (built for another torch, e.g. after an upgrade: undefined
    symbols) is told apart from a missing one, and the message says to rebuild."""
    stale = tmp_path / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    stale.write_bytes(b"not a shared object")
    monkeypatch.setattr(decinv_fast, "__path__", [str(tmp_path), *decinv_fast.__path__])
    assert _extension.extension() is None
    error = _extension.extension_error()
    assert error.startswith("built but does not load (built for another torch, Python or CUDA?); rebuild it: "
                            "pip install --no-build-isolation -e .")
    assert str(stale) in error  # the loader's own words, naming the file


@pytest.mark.parametrize("error", [
    ModuleNotFoundError("No module named 'somewhere_else'", name="somewhere_else"),  # a module _C imports
    ImportError("undefined symbol: _ZN3c10", name="decinv_fast._C"),  # _C itself, found but failing to link
])
def test_extension_that_is_there_but_fails_to_import_says_it_does_not_load(monkeypatch, fresh_extension_load, error):
    """Only ``_C`` itself not found is 'not built'."""
    def import_module(name):
        raise error

    monkeypatch.setattr(_extension.importlib, "import_module", import_module)
    assert _extension.extension() is None
    assert _extension.extension_error().startswith("built but does not load")


def test_public_exports():
    assert all(hasattr(decinv_fast, name) for name in decinv_fast.__all__)
    # what backend="cuda"/"triton" raises when they cannot run is catchable without a private import
    assert issubclass(decinv_fast.BackendUnavailable, RuntimeError)
    assert "BackendUnavailable" in decinv_fast.__all__


def test_info_reports_versions_and_every_backend():
    import platform
    from importlib.metadata import version

    import diffusers

    report = decinv_fast.info()
    assert report["decinv_fast"] == decinv_fast.__version__ == version("decinv-fast")
    assert report["torch"] == torch.__version__
    assert report["python"] == platform.python_version()
    assert report["torch_cuda"] == torch.version.cuda
    assert report["cuda_available"] == torch.cuda.is_available()
    assert report["diffusers"] == diffusers.__version__
    assert set(report["backends"]) == {"cuda", "triton", "torch", "reference"}
    assert report["backends"]["torch"] == "available"
    if _extension.extension_error() is not None:
        assert report["backends"]["cuda"] == _extension.extension_error()
    assert report["vae_classes"]["AutoencoderKLFlux2"] == "available"  # diffusers 0.42.1 has every kind


def test_info_names_vae_classes_the_installed_diffusers_lacks(monkeypatch):
    import diffusers

    monkeypatch.setattr(diffusers, "AutoencoderKLMochi", None)  # as as_adapter reads an older diffusers
    classes = decinv_fast.info()["vae_classes"]
    assert classes["AutoencoderKLMochi"] == f"not in diffusers {diffusers.__version__}"
    assert classes["AutoencoderKL"] == "available" and len(classes) == 17


def test_pyproject_metadata_builds_without_setuptools_deprecations():
    """``license = { text = ... }`` warned "deprecated" (removal announced for 2027-02-18); the Makefile
    installs the newest setuptools, so a table form would stop fresh clones from building then."""
    import warnings
    from pathlib import Path

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any setuptools deprecation fails the test
        dist = apply_configuration(Distribution(), Path(__file__).parents[1] / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"
