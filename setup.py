"""setuptools shim: pyproject.toml holds the metadata; cffi's API-mode module needs cffi_modules here."""

from setuptools import setup

setup(cffi_modules=["recmgd/_build_native.py:ffibuilder", "recmgd/_build_simcore.py:ffibuilder"])
