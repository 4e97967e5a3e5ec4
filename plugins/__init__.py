"""Behaviour as plugins: the built-in presets and rule generators (`builtin`).

Installed as the `patchbay_plugins` package; third-party plugins follow the same shape and
announce themselves through the `patchbay` entry-point group.
"""
