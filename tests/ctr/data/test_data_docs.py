"""Module rules for the data layer: runnable examples and ``Args:`` sections on public classes."""

import doctest
import importlib
import inspect

import pytest

MODULES = ["ctr.data.badrows", "ctr.data.loader", "ctr.data.prepare", "ctr.data.readers", "ctr.data.split",
           "ctr.data.synthetic", "ctr.data.textfmt", "ctr.features.artifact", "ctr.features.transform",
           "ctr.features.values", "ctr.features.vocab"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    assert doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize("name", MODULES)
def test_public_classes_document_args(name):
    module = importlib.import_module(name)
    classes = [obj for attr, obj in vars(module).items() if inspect.isclass(obj) and obj.__module__ == name
               and not attr.startswith("_") and obj.__doc__ and "enum" not in str(obj.__mro__)]
    missing = [c.__name__ for c in classes if "Args:" not in inspect.getdoc(c)]
    assert missing == []
