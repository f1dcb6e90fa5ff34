"""benchmarks/gpu_e2e.sh on the CPU with its tiny override: the headline command's whole path
(CIFAR-10-format data, both stages, checkpoints, resume, --mode sample, --mode eval)."""
import json
import os
import re
import subprocess
import sys

import numpy as np

from cli_testutil import ROOT, main_env


def test_gpu_e2e_script_runs_on_the_cpu(tmp_path):
  env = main_env()
  env.update(OUT=str(tmp_path), GPU_E2E_TINY='1', PYTHON=sys.executable,
             GPU_E2E_CACHE=os.environ.get('PIXDIFF_JAX_CACHE', str(ROOT / '.jax_cache')))
  run = subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu_e2e.sh')], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
  assert run.stdout.rstrip().endswith('gpu_e2e: ok')
  # Each part's seconds, in order.
  parts = re.findall(r'^## (\w+): (\d+) s \(exit 0', run.stdout, re.M)
  assert [p for p, _ in parts] == ['data', 'train', 'resume', 'sample', 'eval']
  w = tmp_path / 'workdir'
  assert sorted(os.listdir(w / 'checkpoints' / 'reverse')) == ['2', '4']
  assert os.listdir(w / 'checkpoints' / 'vae') == ['2']
  assert json.loads((w / 'config.json').read_text())['data']['dataset'] == 'cifar10'
  with np.load(next((w / 'samples').glob('*.npz'))) as f:
    assert f['images'].shape == (4, 32, 32, 3) and f['images'].dtype == np.uint8
  (row,) = json.loads((w / 'eval' / 'results.json').read_text())['settings']
  assert row['num_samples'] == 6 and np.isfinite(row['fd_efflite0']) and row['fd_efflite0'] > 0
