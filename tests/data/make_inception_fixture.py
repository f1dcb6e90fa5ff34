"""Makes tests/data/inception_features.npz with pytorch-fid's own InceptionV3 (needs torch).

pytorch-fid's weight file cannot be downloaded here, so the fixture pins the ARCHITECTURE and the
input pipeline: pytorch-fid's ``InceptionV3([3])`` (``fid_inception_v3``, its resize to 299 and
``2 x - 1``) is loaded with the deterministic random weights of
``tests/metrics_testutil.random_inception_state_dict(0)``; the test feeds the same weights to the
Flax port through ``variables_from_torch`` and compares pool3 features.

    pip install torch torchvision pytorch-fid      # torchvision only for pytorch-fid's classes
    python tests/data/make_inception_fixture.py

Input: the first 2 Fashion-MNIST test images zero-padded to 32x32 (uint8 [2, 32, 32, 1]), fed with
``crop_to=28``; pytorch-fid's pipeline: ``x / 255`` replicated to RGB, then its own model.
(torchvision's compiled ops are not needed; their meta registrations are skipped so that a
torchvision wheel built for another torch still imports.)
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import types

import numpy as np

sys.modules.setdefault('torchvision._meta_registrations', types.ModuleType('skipped'))
import torch  # noqa: E402
from pytorch_fid import inception as pfid  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / 'tests')]
from pixdiff_jax import data as pdata  # noqa: E402
import metrics_testutil  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=str(ROOT / 'tests' / 'data' / 'inception_features.npz'))
  args = parser.parse_args()
  state = {k: torch.from_numpy(v) for k, v in
           metrics_testutil.random_inception_state_dict(0).items()}
  pfid.load_state_dict_from_url = lambda *a, **k: state  # instead of the download
  model = pfid.InceptionV3([pfid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  torch.set_num_threads(2)

  images = pdata.read_idx(os.path.join(pdata.FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz'))[:2]
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None].astype(np.uint8)
  x = torch.from_numpy(padded[:, 2:30, 2:30].astype(np.float32) / 255).permute(0, 3, 1, 2)
  with torch.no_grad():
    feats = model(x.repeat(1, 3, 1, 1))[0].squeeze(-1).squeeze(-1).numpy()
  np.savez_compressed(args.out, images=padded, crop_to=np.int64(28), features=feats,
                      weights_seed=np.int64(0), torch_version=np.str_(torch.__version__))
  print(f'wrote {args.out}: features {feats.shape}, |f| max {np.abs(feats).max():.3g}, '
        f'mean {feats.mean():.3g}')


if __name__ == '__main__':
  main()
