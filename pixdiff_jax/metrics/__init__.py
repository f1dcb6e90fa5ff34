"""Frechet metrics in JAX/Flax, with no torch or TensorFlow at run time.

* :func:`gaussian_stats`, :func:`frechet_distance` -- float64 statistics and distance.
* :func:`get_feature_extractor` -- ``'efflite0'``: EfficientNet-Lite0 ImageNet features
  (1280-d), the ``FD_efflite0`` definition (see :mod:`pixdiff_jax.metrics.features`);
  ``'inception'``: pytorch-fid's InceptionV3 pool3 (2048-d) for FID proper, from the weight file
  ``pt_inception-2015-12-05-6726825d.pth`` given by path (:mod:`pixdiff_jax.metrics.inception`).
* :func:`reference_stats` -- statistics of every image of a dataset split (Fashion-MNIST, MNIST,
  an npz file, or any dataset of a training config's ``data`` section), cached on disk;
  :func:`cached_stats` -- the same cache for any image set (e.g. CIFAR-10 read from a config).
* :func:`real_floor` -- the real-vs-real floor (train images vs the reference split).
* :func:`fd_efflite0` -- one call: images -> ``FD_efflite0``.

Command line: ``python -m pixdiff_jax.metrics SAMPLES.npz [--dataset fashion_mnist --split test]``.
"""
from pixdiff_jax.metrics.extractor import FeatureExtractor, center_crop, resize_bilinear
from pixdiff_jax.metrics.features import EXTRACTORS, get_feature_extractor
from pixdiff_jax.metrics.frechet import frechet_distance, gaussian_stats
from pixdiff_jax.metrics.inception import WEIGHTS_FLAG as INCEPTION_WEIGHTS_FLAG
from pixdiff_jax.metrics.reference import (REFERENCE_DATASETS, cached_stats, fd_efflite0,
                                           load_split, match_reference, real_floor,
                                           reference_stats, sample_crop)
from pixdiff_jax.metrics.weights import WeightsNotFoundError, cache_dir

__all__ = ['FeatureExtractor', 'center_crop', 'resize_bilinear', 'EXTRACTORS',
           'get_feature_extractor', 'frechet_distance', 'gaussian_stats', 'cached_stats',
           'fd_efflite0', 'load_split', 'match_reference', 'real_floor', 'reference_stats',
           'sample_crop', 'WeightsNotFoundError', 'cache_dir', 'INCEPTION_WEIGHTS_FLAG',
           'REFERENCE_DATASETS']
