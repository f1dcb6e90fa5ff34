"""Image data, offline. image sources, scaling to the model's range, and sharded batches.

``readers`` opens a dataset named by ``config.data`` (IDX, npz, image folders, the CIFAR-10 archive,
CelebA, TFDS) as a ``sources.ImageSource``; ``scaling`` maps ``uint8`` images to the models'
ranges and back; ``batching`` yields the host batches of a training step. Everything public is
re-exported here (``from pixdiff_jax import data; data.load_source(config)``).
"""
from pixdiff_jax.data.batching import *  # noqa: F401,F403
from pixdiff_jax.data.readers import *  # noqa: F401,F403
from pixdiff_jax.data.scaling import *  # noqa: F401,F403
from pixdiff_jax.data.sources import *  # noqa: F401,F403
