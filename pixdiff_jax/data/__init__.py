"""Image data: sources (IDX, npz, image folders, TFDS, the CIFAR-10 archive, CelebA), scaling to
the model's range and host batching. Everything public is re-exported from ``pipeline``."""
from pixdiff_jax.data.pipeline import *  # noqa: F401,F403
from pixdiff_jax.data.pipeline import __all__  # noqa: F401
