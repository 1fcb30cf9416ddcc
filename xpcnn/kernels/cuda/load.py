"""What the registry imports for CuPy arrays: installs :mod:`~xpcnn.kernels.cuda.cupy_set` with CuPy.

Fails with ImportError where CuPy is not installed (the registry then reports the set as not loaded).
"""

from __future__ import annotations

import cupy

from .cupy_set import install

kernels = install(cupy)
