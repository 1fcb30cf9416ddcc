"""xpcnn: convolutional neural networks written once against the Python Array API.

Pick where arrays live with ``XPCNN_BACKEND=numpy|cupy|torch|array_api_strict``
(optionally ``name:device``) or :func:`set_backend`; the layers take their
array namespace from their inputs.
"""

from . import backend, functional, initializers, layers
from .backend import asarray, get_backend, set_backend, to_numpy, using
from .gradcheck import gradcheck
from .model import Sequential

__version__ = "0.1.0"

__all__ = ["Sequential", "__version__", "asarray", "backend", "functional", "get_backend", "gradcheck",
           "initializers", "layers", "set_backend", "to_numpy", "using"]
