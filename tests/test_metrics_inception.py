"""Tests of FID proper's InceptionV3 (pytorch-fid's network) in Flax, with random weights.

The real weight file cannot be downloaded here; the fixture tests/data/inception_features.npz was
made by pytorch-fid's own model (tests/data/make_inception_fixture.py) with the deterministic
random weights of metrics_testutil, so it pins the architecture, the weight mapping and the
resize-to-299 pipeline.
"""
import pathlib

import numpy as np
import pytest

import metrics_testutil
from pixdiff_jax import metrics
from pixdiff_jax.metrics import inception

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_port_matches_pytorch_fid_with_random_weights():
  with np.load(ROOT / 'tests' / 'data' / 'inception_features.npz') as f:
    images, crop, ref = f['images'], int(f['crop_to']), f['features'].astype(np.float64)
  state = metrics_testutil.random_inception_state_dict(0)
  ex = inception.inception_extractor(inception.variables_from_torch(state), '0' * 64)
  assert ex.name == 'inception' and ex.dim == 2048
  got = ex(images, crop_to=crop)
  assert got.shape == (2, 2048) and got.dtype == np.float64
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_weight_mapping_names_what_is_wrong():
  state = metrics_testutil.random_inception_state_dict(0)
  del state['Mixed_6b.branch7x7_2.conv.weight']
  with pytest.raises(ValueError, match=r"missing \['params/Mixed_6b/branch7x7_2/conv/kernel'\]"):
    inception.variables_from_torch(state)
  state = metrics_testutil.random_inception_state_dict(0)
  state['Mixed_5b.branch1x1.conv.weight'] = np.zeros((64, 192, 3, 3), np.float32)
  with pytest.raises(ValueError, match='wrong shape'):
    inception.variables_from_torch(state)


@pytest.mark.parametrize('path', [None, '', '/nonexistent/pt_inception.pth'])
def test_missing_weights_is_one_line_naming_flag_and_source(path):
  with pytest.raises(metrics.WeightsNotFoundError) as e:
    metrics.get_feature_extractor('inception', weights_path=path)
  message = str(e.value)
  assert '\n' not in message
  assert '--config.eval.inception_weights' in message
  assert 'github.com/mseitzer/pytorch-fid/releases' in message
  assert 'pt_inception-2015-12-05-6726825d.pth' in message
