"""xpcnn: convolutional neural networks written once against the Python Array API.

Pick where arrays live with ``XPCNN_BACKEND=numpy|cupy|torch|array_api_strict``
(optionally ``name:device``) or :func:`set_backend`; the layers take their
array namespace from their inputs.
"""

from . import backend, checkpoint, checks, datasets, functional, initializers, kernels, layers, models, optim, train  # noqa: E402,I001  (they import the above)
from .backend import asarray, get_backend, set_backend, to_numpy, using
from .gradient_check import gradcheck
from .model import Sequential

__version__ = "0.1.0"

__all__ = ["Sequential", "__version__", "asarray", "backend", "checkpoint", "checks", "datasets", "functional",
           "get_backend", "gradcheck", "initializers", "kernels", "layers", "models", "optim", "set_backend",
           "to_numpy", "train", "using"]
