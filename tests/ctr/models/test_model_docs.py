"""Module rules for ctr/models: runnable examples, ``Args:``/``Example::`` docstrings, ≤ 5 constructor args."""

import doctest
import importlib
import inspect
import pkgutil

import pytest
from torch import nn

import ctr.models

MODULES = sorted(m.name for m in pkgutil.walk_packages(ctr.models.__path__, "ctr.models."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def _public_modules():
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == name
                    and not attr.startswith("_")):
                yield obj


@pytest.mark.parametrize("cls", list(_public_modules()), ids=lambda c: c.__name__)
def test_public_modules_document_args_and_example(cls):
    doc = inspect.getdoc(cls) or ""
    assert "Args:" in doc and "Example::" in doc
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    assert len(params) <= 5


def test_every_model_declares_needs_first_order():
    for _, cls in ctr.models.MODELS.values():
        assert isinstance(cls.needs_first_order, bool)
