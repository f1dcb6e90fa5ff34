"""Tests of the FD_efflite0 features: torch-free weights, the Flax port against the original
PyTorch model (pinned fixture), the resize, batching, reference statistics and the CLI.

All network calls use batches of 4 28x28 images (or the fixture's 2 RGB images) so that the jitted
network compiles only twice. Reference statistics here use tiny splits (``max_examples`` or a
small npz): NOT the standard definition, which uses every image of the split.
"""
import json
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

from pixdiff_jax import data as data_lib, metrics
from pixdiff_jax.metrics import __main__ as metrics_cli, efficientnet_lite, torch_pickle, weights

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT / 'tests' / 'data' / 'efflite0_features.npz'


@pytest.fixture(scope='module')
def fixture():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope='module')
def ex():
  return metrics.get_feature_extractor('efflite0')


def _torch_bilinear_matrix(n_in, n_out):
  """Row i: torch's align_corners=False weights, float64: source (i + 0.5) n_in / n_out - 0.5,
  clamped below at 0, neighbours floor / floor + 1 clamped to the last pixel."""
  a = np.zeros((n_out, n_in))
  for i in range(n_out):
    src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = min(int(np.floor(src)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    lam = src - i0
    a[i, i0] += 1 - lam
    a[i, i1] += lam
  return a


@pytest.mark.parametrize('h,w,size', [(28, 28, 128), (40, 33, 128), (200, 150, 128),
                                      (28, 28, 299), (7, 5, 3)])
def test_resize_matches_torch_bilinear_half_pixel(h, w, size):
  x = np.random.default_rng(h * w).normal(size=(2, h, w, 3))
  expected = np.einsum('oh,bhwc->bowc', _torch_bilinear_matrix(h, size), x)
  expected = np.einsum('pw,bowc->bopc', _torch_bilinear_matrix(w, size), expected)
  got = np.asarray(metrics.resize_bilinear(x.astype(np.float32), size))
  np.testing.assert_allclose(got, expected, atol=2e-5 * np.abs(x).max())


def test_center_crop_undoes_padding():
  images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  np.testing.assert_array_equal(metrics.center_crop(padded, 28), images)
  assert metrics.sample_crop('fashion_mnist', padded) == 28
  assert metrics.sample_crop('fashion_mnist', images) is None
  assert metrics.sample_crop('npz', padded) is None
  with pytest.raises(ValueError, match='crop_to=40 does not fit'):
    metrics.center_crop(padded, 40)


def test_weight_reader_gives_the_lite0_state_dict():
  state = torch_pickle.load_state_dict(weights.efflite0_weights_file())
  assert len(state) == 296
  assert state['_conv_stem.weight'].shape == (32, 3, 3, 3)
  assert state['_conv_head.weight'].shape == (1280, 320, 1, 1)
  assert state['_fc.weight'].shape == (1000, 1280)
  assert state['_bn1.num_batches_tracked'].dtype == np.int64
  assert all(np.isfinite(v).all() for v in state.values())
  variables = efficientnet_lite.variables_from_torch(state)
  np.testing.assert_array_equal(variables['params']['blocks_3']['depthwise_conv']['kernel'],
                                state['_blocks.3._depthwise_conv.weight'].transpose(2, 3, 1, 0))


def _state_dict_pickle(tensors):
  """Protocol-2 pickle of an OrderedDict of ``_rebuild_tensor_v2(storage, offset, size, stride,
  False, {})`` with storages as persistent ids, opcode by opcode as ``torch.save`` writes it;
  returns ``(pickle bytes, {storage key: flat float32 data})``."""
  def item(obj):
    return pickle.dumps(obj, protocol=2)[2:-1]  # the object's opcodes, no PROTO / STOP

  storages, body = {}, b'\x80\x02ccollections\nOrderedDict\n)R('
  for name, (array, offset, shape, stride) in tensors.items():
    key = str(len(storages))
    storages[key] = np.ascontiguousarray(array, np.float32).ravel()
    body += item(name) + b'ctorch._utils\n_rebuild_tensor_v2\n('
    body += (b'(' + item('storage') + b'ctorch\nFloatStorage\n' + item(key) + item('cpu')
             + item(storages[key].size) + b'tQ')  # TUPLE, BINPERSID
    body += item(offset) + item(tuple(shape)) + item(tuple(stride)) + b'\x89}tR'
  return body + b'u.', storages


def _write_torch_legacy(path, tensors):
  """A file in torch's legacy (< 1.6) format: 3 header pickles, the state dict, the storage
  keys, then each storage as int64 element count + raw little-endian bytes."""
  body, storages = _state_dict_pickle(tensors)
  with open(path, 'wb') as f:
    pickle.dump(torch_pickle.LEGACY_MAGIC_NUMBER, f, protocol=2)
    pickle.dump(1001, f, protocol=2)
    pickle.dump({'protocol_version': 1001, 'little_endian': True}, f, protocol=2)
    f.write(body)
    pickle.dump(list(storages), f, protocol=2)
    for flat in storages.values():
      f.write(np.int64(flat.size).tobytes() + flat.astype('<f4').tobytes())


def _write_torch_zip(path, tensors):
  """A file in torch's zip format (>= 1.6): archive/data.pkl + archive/data/<key>."""
  import zipfile  # pylint: disable=g-import-not-at-top
  body, storages = _state_dict_pickle(tensors)
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', body)
    z.writestr('archive/version', '3\n')
    for key, flat in storages.items():
      z.writestr(f'archive/data/{key}', flat.astype('<f4').tobytes())


@pytest.mark.parametrize('writer', [_write_torch_legacy, _write_torch_zip])
def test_reader_handles_offsets_and_strides(tmp_path, writer):
  base = np.arange(24, dtype=np.float32)
  path = tmp_path / 'w.pth'
  writer(path, {
      'plain': (base, 0, (2, 3, 4), (12, 4, 1)),
      'transposed': (base, 0, (4, 6), (1, 4)),    # a .t() of a [6, 4] tensor
      'offset': (base, 5, (3,), (2,)),            # a strided slice starting at element 5
  })
  state = torch_pickle.load_state_dict(path)
  assert list(state) == ['plain', 'transposed', 'offset']
  np.testing.assert_array_equal(state['plain'], base.reshape(2, 3, 4))
  np.testing.assert_array_equal(state['transposed'], base.reshape(6, 4).T)
  np.testing.assert_array_equal(state['offset'], base[5:11:2])


def test_reader_refuses_other_globals(tmp_path):
  path = tmp_path / 'evil.pth'
  with open(path, 'wb') as f:
    for obj in (torch_pickle.LEGACY_MAGIC_NUMBER, 1001, {'little_endian': True}):
      pickle.dump(obj, f, protocol=2)
    f.write(b'\x80\x02cos\nsystem\n.')
  with pytest.raises(pickle.UnpicklingError, match='unsupported global os.system'):
    torch_pickle.load_state_dict(path)


def test_flax_port_matches_pytorch_fixture(ex, fixture):
  """The pinned features (tests/data/make_efflite0_fixture.py, original PyTorch model)."""
  assert ex.name == 'efflite0' and ex.dim == 1280 and len(ex.weights_hash) == 64
  for kind, crop in (('grey', int(fixture['grey_crop_to'])), ('rgb', None)):
    got = ex(fixture[f'{kind}_images'], crop_to=crop)
    ref = fixture[f'{kind}_features'].astype(np.float64)
    assert got.dtype == np.float64 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(),
                               err_msg=kind)


def test_batches_and_padding_do_not_change_features(ex, fixture):
  grey = fixture['grey_images']
  whole = ex(grey, crop_to=28)
  in_pieces = np.concatenate([ex(grey[:3], crop_to=28, batch_size=4),
                              ex(grey[3:], crop_to=28)])  # 3 + zero padding; 1 alone
  np.testing.assert_allclose(in_pieces, whole, rtol=1e-4, atol=1e-5)
  # Grey input is the same as the grey value replicated to RGB by hand.
  rgb = np.repeat(metrics.center_crop(grey, 28), 3, axis=-1)
  np.testing.assert_allclose(ex(rgb), whole, rtol=1e-4, atol=1e-5)


def test_bad_images_are_clear_errors(ex):
  with pytest.raises(ValueError, match='must be uint8'):
    ex(np.zeros((4, 28, 28, 1), np.float32))
  with pytest.raises(ValueError, match='C = 1 or 3'):
    ex(np.zeros((4, 28, 28, 2), np.uint8))
  with pytest.raises(ValueError, match='unknown feature extractor'):
    metrics.get_feature_extractor('vgg')
  with pytest.raises(metrics.WeightsNotFoundError, match='not found'):
    metrics.get_feature_extractor('efflite0', weights_path='/nonexistent/w.pth')


def test_reference_stats_are_cached_by_data(ex, fixture, tmp_path, monkeypatch):
  monkeypatch.setenv('PIXDIFF_JAX_METRICS_CACHE', str(tmp_path / 'cache'))
  images = metrics.center_crop(fixture['grey_images'], 28)
  ref = tmp_path / 'ref.npz'
  np.savez(ref, images=images)
  mu, sigma, n = metrics.reference_stats(ex, dataset='npz', path=str(ref))
  assert n == 4
  exp_mu, exp_sigma = metrics.gaussian_stats(ex(images))
  np.testing.assert_allclose(mu, exp_mu, rtol=1e-12)
  np.testing.assert_allclose(sigma, exp_sigma, rtol=1e-12)
  cached = list((tmp_path / 'cache' / 'reference_stats').glob('*.npz'))
  assert len(cached) == 1 and ex.weights_hash[:16] in cached[0].name
  # Second call: read back from the cache (same file, same values).
  mu2, sigma2, _ = metrics.reference_stats(ex, dataset='npz', path=str(ref))
  np.testing.assert_array_equal(mu2, mu)
  assert len(list(cached[0].parent.glob('*.npz'))) == 1
  # Changed image bytes: a new cache entry, not the stale statistics.
  np.savez(ref, images=255 - images)
  mu3, _, _ = metrics.reference_stats(ex, dataset='npz', path=str(ref))
  assert len(list(cached[0].parent.glob('*.npz'))) == 2
  assert not np.allclose(mu3, mu)


def test_real_floor_on_a_tiny_split(ex, tmp_path, monkeypatch):
  """Non-standard: the first 4 images of each Fashion-MNIST split (max_examples=4)."""
  monkeypatch.setenv('PIXDIFF_JAX_METRICS_CACHE', str(tmp_path / 'cache'))
  floor = metrics.real_floor(ex, 4, dataset='fashion_mnist', max_examples=4)
  train = metrics.load_split('fashion_mnist', 'train', max_examples=4)
  test = metrics.load_split('fashion_mnist', 'test', max_examples=4)
  expected = metrics.frechet_distance(*metrics.gaussian_stats(ex(train)),
                                      *metrics.gaussian_stats(ex(test)))
  np.testing.assert_allclose(floor, expected, rtol=1e-9)
  with pytest.raises(ValueError, match='the floor needs 2 <= n <= 4'):
    metrics.real_floor(ex, 5, dataset='fashion_mnist', max_examples=4)


def test_cli_prints_one_json_object(ex, fixture, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('PIXDIFF_JAX_METRICS_CACHE', str(tmp_path / 'cache'))
  images = metrics.center_crop(fixture['grey_images'], 28)
  np.savez(tmp_path / 'ref.npz', images=images)
  np.savez(tmp_path / 'samples.npz', images=images[::-1].copy())
  rc = metrics_cli.main([str(tmp_path / 'samples.npz'), '--dataset', 'npz',
                         '--data_path', str(tmp_path / 'ref.npz')])
  out = capsys.readouterr().out.strip().splitlines()
  assert rc == 0 and len(out) == 1
  result = json.loads(out[0])
  assert result['n'] == 4 and result['reference_n'] == 4 and result['crop_to'] is None
  assert result['weights_sha256'] == ex.weights_hash
  # Same images in another order: the same Gaussian, distance ~ 0 (float32 features).
  assert abs(result['fd_efflite0']) < 1e-6 * np.trace(metrics.gaussian_stats(ex(images))[1])


@pytest.mark.parametrize('make,message', [
    (lambda p: np.savez(p, images=np.zeros((1, 28, 28), np.uint8)), 'at least 2 samples, got 1'),
    (lambda p: np.savez(p, x=np.zeros((4, 28, 28), np.uint8)), 'no key "images"'),
    (lambda p: np.savez(p, images=np.zeros((4, 28, 28), np.float32)), 'must be uint8'),
    (lambda p: p.write_text('not an npz'), 'cannot read'),
])
def test_cli_bad_input_is_one_error_line(tmp_path, capsys, make, message):
  path = tmp_path / 'samples.npz'
  make(path)
  assert metrics_cli.main([str(path)]) == 2
  captured = capsys.readouterr()
  assert captured.out == ''
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], captured.err


def test_cli_missing_file_exit_status(tmp_path):
  run = subprocess.run([sys.executable, '-m', 'pixdiff_jax.metrics', str(tmp_path / 'no.npz')],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'PYTHONPATH': str(ROOT)})
  assert run.returncode == 2 and run.stdout == ''
  assert run.stderr.strip().splitlines() == [
      f'error: cannot read {tmp_path / "no.npz"} as a .npz file (FileNotFoundError)']


def test_metrics_need_no_torch_or_tensorflow(tmp_path):
  """Import, weight conversion and reference loading with torch / TensorFlow made unimportable."""
  code = (
      "import sys; sys.modules['torch'] = None; sys.modules['tensorflow'] = None\n"
      "from pixdiff_jax import metrics\n"
      "ex = metrics.get_feature_extractor('efflite0')\n"
      "assert ex.dim == 1280\n"
      "print(len(metrics.load_split('fashion_mnist', 'test')))\n")
  run = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, 'PYTHONPATH': str(ROOT),
                                         'PIXDIFF_JAX_METRICS_CACHE': str(tmp_path)})
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip() == '10000'
  assert list(tmp_path.glob('efflite0-*.npz'))  # converted without torch


def test_cached_stats_of_any_image_set_with_crop(ex, fixture, tmp_path, monkeypatch):
  monkeypatch.setenv('PIXDIFF_JAX_METRICS_CACHE', str(tmp_path / 'cache'))
  padded = fixture['grey_images']
  mu, sigma = metrics.cached_stats(ex, padded, tag='mine', crop_to=28)
  exp_mu, exp_sigma = metrics.gaussian_stats(ex(padded, crop_to=28))
  np.testing.assert_allclose(mu, exp_mu, rtol=1e-12)
  np.testing.assert_allclose(sigma, exp_sigma, rtol=1e-12)
  (cached,) = (tmp_path / 'cache' / 'reference_stats').glob('*.npz')
  assert cached.name.startswith(f'efflite0-{ex.weights_hash[:16]}-mine-crop28-n4-')


def test_fd_efflite0_one_call(ex, fixture, tmp_path, monkeypatch):
  """fd_efflite0 against a small npz reference (non-standard size) equals the explicit steps."""
  monkeypatch.setenv('PIXDIFF_JAX_METRICS_CACHE', str(tmp_path / 'cache'))
  images = metrics.center_crop(fixture['grey_images'], 28)
  np.savez(tmp_path / 'ref.npz', images=255 - images)
  fd = metrics.fd_efflite0(images, dataset='npz', path=str(tmp_path / 'ref.npz'))
  expected = metrics.frechet_distance(*metrics.gaussian_stats(ex(images)),
                                      *metrics.gaussian_stats(ex(255 - images)))
  assert fd > 1.0
  np.testing.assert_allclose(fd, expected, rtol=1e-9)
  with pytest.raises(ValueError, match='at least 2 samples, got 1'):
    metrics.fd_efflite0(images[:1], dataset='npz', path=str(tmp_path / 'ref.npz'))


def test_cli_refuses_images_of_another_size_or_channel_count(fixture, tmp_path, capsys,
                                                             monkeypatch):
  """7x7 samples against the 28x28 Fashion-MNIST test split: one line (was scored, FD 1150);
  --resize resizes them and says so in the JSON; channels are never converted."""
  monkeypatch.setenv('PIXDIFF_JAX_METRICS_CACHE', str(tmp_path / 'cache'))
  small = tmp_path / 'small.npz'
  np.savez(small, images=np.random.default_rng(0).integers(0, 256, (4, 7, 7, 1), np.uint8))
  if (pathlib.Path(data_lib.FASHION_MNIST_DIR) / 't10k-images-idx3-ubyte.gz').exists():
    assert metrics_cli.main([str(small)]) == 2
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err.strip().splitlines() == [
        f'error: the images in {small} are 7x7x1 images but the fashion_mnist test split holds '
        '28x28x1 images: a distance between images of different sizes measures the size; give '
        '28x28 images, or add --resize to resize them (bilinear; the JSON then says '
        '"resized_from")']
  images = metrics.center_crop(fixture['grey_images'], 28)
  np.savez(tmp_path / 'ref.npz', images=images)
  ref = ['--dataset', 'npz', '--data_path', str(tmp_path / 'ref.npz')]
  assert metrics_cli.main([str(small), *ref, '--resize']) == 0
  result = json.loads(capsys.readouterr().out)
  assert (result['resized_from'], result['resized_to'], result['n']) == ([7, 7], [28, 28], 4)
  assert np.isfinite(result['fd_efflite0'])
  rgb = tmp_path / 'rgb.npz'
  np.savez(rgb, images=np.repeat(images, 3, axis=-1))
  assert metrics_cli.main([str(rgb), *ref, '--resize']) == 2
  assert 'a different channel count (give 1-channel images' in capsys.readouterr().err
  with pytest.raises(ValueError, match='are 7x7x1 images but the npz test split holds 28x28x1'):
    metrics.fd_efflite0(np.load(small)['images'], dataset='npz', path=str(tmp_path / 'ref.npz'))
