"""Build glue: setuptools compiles the C core in csrc/ through cffi (see csrc/build_native.py)."""

from setuptools import setup

setup(cffi_modules=["csrc/build_native.py:ffibuilder"])
