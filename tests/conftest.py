import importlib

import pytest
import torch

import bn_utils


@pytest.fixture(scope="session")
def ref():
    """The NumPy reference (fastbn/reference.py)."""
    return bn_utils.load_reference()


@pytest.fixture(scope="session")
def fb():
    """The fastbn package. Importing it is part of what is tested: a missing
    or broken build makes the tests that need it fail (never skip)."""
    return importlib.import_module("fastbn")


@pytest.fixture
def gen():
    """A freshly seeded CPU generator for every test (deterministic inputs)."""
    g = torch.Generator()
    g.manual_seed(1234)
    return g


@pytest.fixture(autouse=True)
def _seed_and_defaults():
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
