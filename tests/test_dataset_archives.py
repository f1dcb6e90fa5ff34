"""CIFAR-10 python archive and CelebA zip/folder readers, offline, on small files made here.

The archives have the real formats (pickled batches ``[N, 3072]`` channel-major in a tar.gz
under ``cifar-10-batches-py/``; JPEG/PNG files in ``img_align_celeba/`` in a zip) with a few
images each, so every path through the readers runs without the real 170 MB / 1.4 GB files.
"""
import io
import pathlib
import pickle
import tarfile
import zipfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from pixdiff_jax import data
from pixdiff_jax.data import celeba_images, cifar10_archive


def _random_u8(shape, seed):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _write_cifar_archive(path, splits, *, drop=(), extra_global=False):
  """Writes a cifar-10-python.tar.gz look-alike; returns {split: uint8 [N, 32, 32, 3]}."""
  images = {}
  with tarfile.open(path, 'w:gz') as tar:
    for split, members in cifar10_archive.SPLIT_MEMBERS.items():
      parts = []
      for k, member in enumerate(members):
        if member in drop:
          continue
        hwc = _random_u8((splits[split], 32, 32, 3), seed=hash(member) % 1000 + k)
        parts.append(hwc)
        batch = {b'batch_label': member.encode(), b'labels': [0] * len(hwc),
                 b'data': hwc.transpose(0, 3, 1, 2).reshape(len(hwc), 3072),
                 b'filenames': [b'x.png'] * len(hwc)}
        if extra_global:
          batch[b'evil'] = print  # a global the reader must refuse to resolve
        raw = pickle.dumps(batch, protocol=2)
        info = tarfile.TarInfo(member)
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
      images[split] = np.concatenate(parts) if parts else None
  return images


def _cifar_config(path, md5, **kw):
  config = ml_collections.ConfigDict({
      'method': 'pixel_aware', 'data': {
          'dataset': 'cifar10', 'path': str(path), 'split': 'train', 'image_size': 32,
          'num_channels': 3, 'pad_to_image_size': False, 'center_crop': 0, 'max_examples': 0,
          'md5': md5, 'download': False}})
  config.data.update(kw)
  return config


def test_cifar10_archive_round_trip(tmp_path):
  path = tmp_path / 'cifar-10-python.tar.gz'
  want = _write_cifar_archive(path, {'train': 3, 'test': 4})
  md5 = cifar10_archive.file_md5(path)
  train = cifar10_archive.read_cifar10(path, 'train', md5=md5)
  # Batches 1..5 in order, each row decoded from channel-major to [H, W, C].
  np.testing.assert_array_equal(train, want['train'])
  assert train.shape == (15, 32, 32, 3) and train.dtype == np.uint8
  np.testing.assert_array_equal(cifar10_archive.read_cifar10(path, 'test', md5=md5),
                                want['test'])
  np.testing.assert_array_equal(
      cifar10_archive.read_cifar10(path, 'train', md5=md5, max_examples=5), want['train'][:5])
  # Through load_source, as configs/cifar10.py uses it.
  source = data.load_source(_cifar_config(path, md5))
  np.testing.assert_array_equal(source.get(np.arange(15)), want['train'])


def test_cifar10_bad_archives_name_the_file(tmp_path):
  path = tmp_path / 'cifar-10-python.tar.gz'
  _write_cifar_archive(path, {'train': 2, 'test': 2})
  # The published md5 (the default) does not match this small archive.
  with pytest.raises(cifar10_archive.ArchiveError, match=f'{path}: md5 .* does not match'):
    cifar10_archive.read_cifar10(path, 'train')
  with pytest.raises(ValueError, match=f'{path}: md5'):
    data.load_source(_cifar_config(path, cifar10_archive.CIFAR10_MD5))

  missing = tmp_path / 'missing_member.tar.gz'
  _write_cifar_archive(missing, {'train': 2, 'test': 2},
                       drop=('cifar-10-batches-py/data_batch_3',))
  with pytest.raises(cifar10_archive.ArchiveError,
                     match=f'{missing}: member cifar-10-batches-py/data_batch_3 is missing'):
    cifar10_archive.read_cifar10(missing, 'train', md5='')

  evil = tmp_path / 'evil.tar.gz'
  _write_cifar_archive(evil, {'train': 1, 'test': 1}, extra_global=True)
  with pytest.raises(cifar10_archive.ArchiveError, match='print is not allowed in a CIFAR-10 batch'):
    cifar10_archive.read_cifar10(evil, 'test', md5='')

  not_gz = tmp_path / 'not.tar.gz'
  not_gz.write_bytes(b'plain text')
  with pytest.raises(cifar10_archive.ArchiveError, match=f'{not_gz}: not a readable'):
    cifar10_archive.read_cifar10(not_gz, 'train', md5='')

  with pytest.raises(data.DatasetNotFoundError, match='cifar-10-python.tar.gz'):
    data.load_source(_cifar_config(tmp_path / 'nowhere.tar.gz', ''))
  with pytest.raises(data.DatasetNotFoundError, match='config.data.path is not set'):
    data.load_source(_cifar_config('', ''))


def test_cifar10_download_checks_md5(tmp_path):
  """The download path, against a file:// URL (no network): verified, renamed, idempotent."""
  src = tmp_path / 'src.tar.gz'
  want = _write_cifar_archive(src, {'train': 1, 'test': 2})
  md5 = cifar10_archive.file_md5(src)
  url = src.resolve().as_uri()
  with pytest.raises(cifar10_archive.ArchiveError, match='expected 0+'):
    cifar10_archive.download(tmp_path / 'bad' / 'x.tar.gz', url=url, md5='0' * 32)
  assert not list((tmp_path / 'bad').iterdir())  # no partial file is left behind
  got = cifar10_archive.download(tmp_path / 'dl' / 'x.tar.gz', url=url, md5=md5)
  assert cifar10_archive.file_md5(got) == md5
  np.testing.assert_array_equal(cifar10_archive.read_cifar10(got, 'test', md5=md5),
                                want['test'])


def _celeba_images(n, seed=0):
  # Smooth images (JPEG-friendly) of the real size: 218 high, 178 wide.
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:218, 0:178]
  out = []
  for _ in range(n):
    a, b, c = rng.uniform(0.2, 1.0, 3)
    img = np.stack([127 + 120 * np.sin(a * yy / 20 + b), 127 + 120 * np.cos(b * xx / 25),
                    127 + 120 * np.sin(c * (xx + yy) / 30)], -1)
    out.append(img.astype(np.uint8))
  return out


def _celeba_config(path, **kw):
  config = ml_collections.ConfigDict({
      'method': 'pixel_aware', 'data': {
          'dataset': 'celeba', 'path': str(path), 'split': 'train', 'image_size': 32,
          'num_channels': 3, 'pad_to_image_size': False, 'center_crop': 140,
          'max_examples': 0}})
  config.data.update(kw)
  return config


@pytest.mark.parametrize('container', ['zip', 'folder'])
def test_celeba_zip_and_folder(tmp_path, container):
  originals = _celeba_images(3)
  # Image numbers 2 and 5 are train, 162771 is validation (the official partition).
  numbers = [5, 2, 162771]
  if container == 'zip':
    path = tmp_path / 'img_align_celeba.zip'
    with zipfile.ZipFile(path, 'w') as z:
      for k, img in zip(numbers, originals):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format='PNG')  # lossless: exact comparison below
        z.writestr(f'img_align_celeba/{k:06d}.png', buf.getvalue())
  else:
    path = tmp_path / 'img_align_celeba'
    path.mkdir()
    for k, img in zip(numbers, originals):
      Image.fromarray(img).save(path / f'{k:06d}.png')
  reader = celeba_images.CelebAImages(path, 'train')
  assert len(reader) == 2
  np.testing.assert_array_equal(reader.read(0), originals[1])  # 000002 before 000005
  np.testing.assert_array_equal(reader.read(1), originals[0])
  assert len(celeba_images.CelebAImages(path, 'validation')) == 1
  assert len(celeba_images.CelebAImages(path, 'all')) == 3

  # The paper's preparation through load_source: central 140x140 crop, resized to 32.
  source = data.load_source(_celeba_config(path))
  got = source.get([0, 1])
  assert got.shape == (2, 32, 32, 3) and got.dtype == np.uint8
  want = data.fit_to_size(np.stack([originals[1], originals[0]]), image_size=32,
                          num_channels=3, pad=False, center_crop=140)
  np.testing.assert_array_equal(got, want)
  # The crop is the centre: rows 39..178, columns 19..158 of the original.
  crop = data.fit_to_size(originals[1][None], image_size=140, num_channels=3, pad=False,
                          center_crop=140)[0]
  np.testing.assert_array_equal(crop, originals[1][39:179, 19:159])


def test_celeba_jpeg_zip_decodes_close_to_original(tmp_path):
  img = _celeba_images(1, seed=3)[0]
  path = tmp_path / 'img_align_celeba.zip'
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format='JPEG', quality=95)
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('img_align_celeba/000001.jpg', buf.getvalue())
  got = celeba_images.CelebAImages(path).read(0)
  assert got.shape == (218, 178, 3)
  assert np.abs(got.astype(int) - img.astype(int)).mean() < 3


def test_celeba_bad_input_names_the_file(tmp_path):
  empty = tmp_path / 'empty_folder'
  empty.mkdir()
  (empty / 'notes.txt').write_text('no images here')
  with pytest.raises(data.DatasetNotFoundError, match=f'{empty}: no .jpg/.jpeg/.png images'):
    data.load_source(_celeba_config(empty))
  with pytest.raises(data.DatasetNotFoundError, match='nowhere.zip: no such file'):
    data.load_source(_celeba_config(tmp_path / 'nowhere.zip'))
  not_zip = tmp_path / 'img_align_celeba.zip'
  not_zip.write_bytes(b'not a zip')
  with pytest.raises(ValueError, match=f'{not_zip}: not a readable zip'):
    data.load_source(_celeba_config(not_zip))
  named = tmp_path / 'named'
  named.mkdir()
  Image.fromarray(_celeba_images(1)[0]).save(named / 'face.png')
  with pytest.raises(ValueError, match="'face.png' is not named by its CelebA number"):
    celeba_images.CelebAImages(named, 'train')
  assert len(celeba_images.CelebAImages(named, 'all')) == 1


def test_configs_read_the_archives_without_tensorflow():
  """configs/cifar10.py and configs/celeba.py name the TensorFlow-free readers."""
  from pixdiff_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(__file__).resolve().parents[1] / 'configs'
  c10 = config_lib.load_config_file(str(root / 'cifar10.py'))
  assert (c10.data.dataset, c10.data.md5) == ('cifar10', 'c58f30108f718f92721af3b95e74349a')
  celeba = config_lib.load_config_file(str(root / 'celeba.py'))
  assert (celeba.data.dataset, celeba.data.center_crop) == ('celeba', 140)
  ddpm = config_lib.load_config_file(str(root / 'ddpm_cifar10.py'))
  assert ddpm.data == c10.data and ddpm.method == 'ddpm'
  for field in ('ch', 'ch_mult', 'num_res_blocks', 'attn_resolutions', 'dropout'):
    assert ddpm.model[field] == c10.model[field], field


def test_cifar10_writer_round_trip_and_eval_reference(tmp_path):
  """write_cifar10 (benchmarks/gpu_e2e.sh's data) reads back exactly; --mode eval's reference
  split of a cifar10 workdir is read through its data config."""
  from pixdiff_jax import metrics  # pylint: disable=g-import-not-at-top
  train, test = _random_u8((12, 32, 32, 3), 1), _random_u8((5, 32, 32, 3), 2)
  path = cifar10_archive.write_cifar10(tmp_path / 'c.tar.gz', train, test)
  np.testing.assert_array_equal(cifar10_archive.read_cifar10(path, 'train', md5=''), train)
  np.testing.assert_array_equal(cifar10_archive.read_cifar10(path, 'test', md5=''), test)
  config = _cifar_config(path, '')
  np.testing.assert_array_equal(
      metrics.load_split('cifar10', 'test', data_config=config.data), test)
  np.testing.assert_array_equal(
      metrics.load_split('cifar10', 'train', max_examples=3, data_config=config.data), train[:3])
  with pytest.raises(ValueError, match='data_config'):
    metrics.load_split('cifar10', 'test')
