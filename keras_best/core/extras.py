"""How to install what an optional feature needs.

keras-best is installed from a checkout (`python -m pip install -e .`), not
from a package index, so a hint names the packages themselves, and the extra
of `pyproject.toml` that brings them for a checkout:

>>> install_hint("plot", "matplotlib")
'python -m pip install matplotlib (or, in a keras-best checkout: python -m pip install -e ".[plot]")'
"""

from __future__ import annotations


def install_hint(extra: str, *packages: str) -> str:
    """The command installing `packages`, and the checkout form with `extra`."""
    return (f"python -m pip install {' '.join(packages)} "
            f'(or, in a keras-best checkout: python -m pip install -e ".[{extra}]")')


__all__ = ["install_hint"]
