"""The Python side of the C core: thin wrappers that turn C return codes into exceptions.

Only this package imports `patchbay_core._native`.
"""
