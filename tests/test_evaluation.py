"""--mode eval / compare / figures on a smoke workdir, setting names, SSIM, error lines."""
import json
import os

import numpy as np
import pytest

from pixdiff_jax import config as config_lib, evaluation
from pixdiff_jax.evaluation import known_noise, report
from pixdiff_jax.metrics.ssim import ssim
from test_cli import FMNIST, ROOT, _main as _run_main

needs_fmnist = pytest.mark.skipif(not FMNIST.exists(),
                                  reason='apt-get install dataset-fashion-mnist')


def _main(*args):
  # Generous: a loaded 2-core machine compiles the samplers and the feature network slowly.
  return _run_main(*args, timeout=1800)


def _smoke_config():
  return config_lib.load_config_file(str(ROOT / 'configs' / 'smoke.py'))


# ---------------------------------------------------------------------------- fast unit tests
def test_setting_names_resolve_to_sampler_overrides():
  config = _smoke_config()  # pixel-aware, T = 8, K = 2 configured
  s = evaluation.parse_setting('x0_jump_KT', config)
  assert s.overrides == {'preset': 'consistent', 'network_calls': 8}
  assert evaluation.parse_setting('consistent', config).overrides['network_calls'] == 2
  assert evaluation.parse_setting('paper', config).overrides == {'preset': 'paper'}
  assert evaluation.parse_setting('vae_prior', config).overrides is None
  ancestral = evaluation.parse_setting('x0_jump_KT_eta1', config)
  assert ancestral.overrides == {'preset': 'consistent', 'network_calls': 8, 'eta': 1.0}
  settings = config_lib.sampler_settings(config, **ancestral.overrides)
  assert (settings['eta'], settings['network_calls'], settings['update']) == (1.0, 8, 'x0_jump')
  assert evaluation.parse_setting('x0_jump_K2_eta0.5', config).overrides['eta'] == 0.5
  names = [s.name for s in evaluation.settings_for(config, config_lib.default_eval_config())]
  assert names == list(evaluation.DEFAULT_SETTINGS['pixel_aware'])
  with pytest.raises(ValueError, match='x0_jump_K9'):
    evaluation.parse_setting('x0_jump_K9', config)
  with pytest.raises(ValueError, match='ddim_10'):
    evaluation.parse_setting('ddim_10', config)  # a baseline sampler on a pixel-aware workdir
  config.method = 'ddpm'
  config.diffusion.num_steps = 1000
  assert evaluation.parse_setting('dpm_solver_20', config).overrides['num_steps'] == 20
  assert evaluation.parse_setting('ddim_10', config).overrides['eta'] == 0.0


def test_the_earlier_sampler_name_parallel_is_the_pixel_aware_sampler():
  config = _smoke_config()
  assert config.sampling.sampler == 'pixel_aware'
  config.sampling.sampler = 'parallel'  # as configs saved before the rename have it
  config_lib.validate_config(config)
  assert config_lib.sampler_settings(config)['sampler'] == 'pixel_aware'
  assert config_lib.sampler_settings(config, sampler='parallel')['sampler'] == 'pixel_aware'
  config.sampling.sampler = 'ddim'
  with pytest.raises(ValueError, match="sampling.sampler='ddim' is not available"):
    config_lib.validate_config(config)


def test_sample_counts_and_their_errors():
  ev = config_lib.default_eval_config()
  ev.num_samples = 100
  ev.num_samples_by_setting = 'ddpm:20'
  assert evaluation.sample_counts(ev, ['ddpm', 'ddim_10']) == {'ddpm': 20, 'ddim_10': 100}
  ev.num_samples = 1
  with pytest.raises(ValueError, match='at least 2'):
    evaluation.sample_counts(ev, ['ddim_10'])
  ev.num_samples, ev.num_samples_by_setting = 10, 'ddpm=3'
  with pytest.raises(ValueError, match='name:n'):
    evaluation.sample_counts(ev, ['ddpm'])


def test_tables_never_show_nan():
  row = {k: 1.0 for k in evaluation.RESULT_COLUMNS}
  row.update(setting='a', sampler='b', fid=None, fid_floor=None, fd_efflite0=float('nan'))
  with pytest.raises(ValueError, match='non-finite'):
    report.row_cells(row)


def test_ssim_identities():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(32, 32))
  assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
  assert ssim(x, 1 - x) < 0  # anti-correlated structure
  # Constant images: only the luminance term is left, (2ab + c1) / (a^2 + b^2 + c1).
  a, b, c1 = 0.3, 0.5, 0.01 ** 2
  expect = (2 * a * b + c1) / (a * a + b * b + c1)
  assert ssim(np.full((32, 32), a), np.full((32, 32), b)) == pytest.approx(expect,
                                                                                   rel=1e-9)


def test_known_noise_increment_target_inverts_the_chain():
  # With the exact increments and eta = 0, Algorithm 1 undoes the forward chain (DESIGN.md 3).
  images = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype(np.float32)
  rows = known_noise.known_noise_table(images, num_steps=10, eps=4e-3, seed=0, gammas=(1.0, 4.0))
  inc = [r for r in rows if r['target'] == 'increment']
  assert len(rows) == 8 and len(inc) == 2
  assert all(r['mse_eta0'] < 1e-9 for r in inc), inc
  assert all(r['mse_eta1'] > 1e-6 for r in inc)  # fresh noise moves it away


# ---------------------------------------------------------------------------- the modes
def _error_line(run):
  assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
  err = [line for line in run.stderr.splitlines() if line.startswith('error:')]
  assert len(err) == 1 and 'Traceback' not in run.stderr, run.stderr[-2000:]
  return err[0]


def test_eval_of_a_workdir_that_was_never_trained(tmp_path):
  run = _main('--mode', 'eval', '--workdir', str(tmp_path / 'nothing'))
  assert 'config.json not found' in _error_line(run)
  config_lib.save_config(_smoke_config(), str(tmp_path / 'w'))  # config, no checkpoints
  run = _main('--mode', 'eval', '--workdir', str(tmp_path / 'w'))
  assert "no checkpoint of stage 'vae'" in _error_line(run)
  run = _main('--mode', 'compare', '--workdirs', str(tmp_path / 'w'),
              '--compare_out', str(tmp_path / 'c'))
  assert '--mode eval' in _error_line(run)


EVAL_ARGS = ['--config', 'configs/smoke.py', '--config.eval.num_samples=6',
             '--config.eval.samplers=paper,x0_jump_K2,vae_prior',
             '--config.eval.num_samples_by_setting=vae_prior:4',
             '--config.eval.reference_max_examples=32', '--config.eval.batch_size=4']


@needs_fmnist
def test_eval_compare_figures_on_a_smoke_workdir(smoke_copy, tmp_path):
  w = smoke_copy  # the session's trained smoke workdir (conftest.py), copied

  bad = _main('--workdir', str(w), '--mode', 'eval', *EVAL_ARGS,
              '--config.eval.inception_weights=/nonexistent/pt_inception.pth')
  assert 'eval.inception_weights' in _error_line(bad)

  run = _main('--workdir', str(w), '--mode', 'eval', *EVAL_ARGS)
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads((w / 'eval' / 'results.json').read_text())
  rows = {r['setting']: r for r in results['settings']}
  assert list(rows) == ['paper', 'x0_jump_K2', 'vae_prior']
  for name, r in rows.items():
    for col in evaluation.RESULT_COLUMNS:
      assert col in r, (name, col)
    for col in ('seconds_per_image', 'fd_efflite0', 'fd_efflite0_floor'):
      assert np.isfinite(r[col]) and r[col] > 0, (name, col, r[col])
    assert r['fid'] is None and r['timed_batches'] >= 3
    with np.load(w / 'eval' / f'{name}.npz') as f:
      assert f['images'].dtype == np.uint8
      assert f['images'].shape == (r['num_samples'], 32, 32, 1)
    assert (w / 'eval' / f'{name}.png').exists()
  assert (rows['paper']['network_evals'], rows['x0_jump_K2']['network_evals'],
          rows['vae_prior']['network_evals']) == (1, 2, 0)
  assert rows['vae_prior']['num_samples'] == 4 and rows['paper']['num_samples'] == 6
  # Same n, same floor (cached); another n, its own floor.
  assert rows['paper']['fd_efflite0_floor'] == rows['x0_jump_K2']['fd_efflite0_floor']
  assert rows['vae_prior']['fd_efflite0_floor'] != rows['paper']['fd_efflite0_floor']
  assert rows['vae_prior']['params'] < rows['paper']['params']
  md = (w / 'eval' / 'results.md').read_text()
  for text in ('FD_efflite0', 'floor (real, same n)', 's/image', 'network evals', 'params',
               '| x0_jump_K2 |', '| vae_prior |'):
    assert text in md, text
  assert 'nan' not in md.lower()

  # An interrupted run: x0_jump_K2 was never sampled, vae_prior sampled but not scored. The
  # rerun samples only x0_jump_K2, scores both, and reuses paper's result as it was.
  mtimes = {n: os.path.getmtime(w / 'eval' / f'{n}.npz') for n in rows}
  results['settings'] = [r for r in results['settings'] if r['setting'] == 'paper']
  (w / 'eval' / 'results.json').write_text(json.dumps(results))
  (w / 'eval' / 'x0_jump_K2.json').unlink()
  rerun = _main('--workdir', str(w), '--mode', 'eval', *EVAL_ARGS)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  again = {r['setting']: r for r in json.loads(
      (w / 'eval' / 'results.json').read_text())['settings']}
  assert list(again) == list(rows)
  assert os.path.getmtime(w / 'eval' / 'paper.npz') == mtimes['paper']
  assert os.path.getmtime(w / 'eval' / 'vae_prior.npz') == mtimes['vae_prior']
  assert os.path.getmtime(w / 'eval' / 'x0_jump_K2.npz') > mtimes['x0_jump_K2']
  assert again['paper'] == rows['paper']
  assert again['vae_prior']['fd_efflite0'] == pytest.approx(rows['vae_prior']['fd_efflite0'],
                                                           rel=1e-9)
  # Same seed, same images, same score.
  assert again['x0_jump_K2']['fd_efflite0'] == pytest.approx(rows['x0_jump_K2']['fd_efflite0'],
                                                            rel=1e-6)

  out = tmp_path / 'cmp' / 'table'
  cmp = _main('--mode', 'compare', '--workdirs', f'{w},{w}', '--compare_out', str(out))
  assert cmp.returncode == 0, cmp.stderr[-3000:]
  table = json.loads((tmp_path / 'cmp' / 'table.json').read_text())
  assert len(table['rows']) == 6
  assert table['rows'][0]['method'].startswith('pixel-aware (T=8')
  md = (tmp_path / 'cmp' / 'table.md').read_text()
  assert md.count('\n') == 2 + 6 and '| method | sampler |' in md

  figs = _main('--mode', 'figures', '--workdir', str(w))
  assert figs.returncode == 0, figs.stderr[-3000:]
  summary = json.loads((w / 'figures' / 'figures.json').read_text())
  for name in ('fig01_snr.png', 'fig02_mean_variance.png', 'fig05_abar.png',
               'fig07_forward.png', 'fig07_reverse.png', 'fig11_samples.png', 'known_noise.md'):
    assert (w / 'figures' / name).stat().st_size > 0, name
  # The reverse progression saw every step T..1 (one call per step) and the result.
  ssims = summary['abar_ssim']['mean_ssim_by_step']
  assert all(-1 <= v <= 1 for v in ssims.values())
  assert len(summary['sample_panels']) == 3
  assert len(summary['known_noise']) == len(known_noise.KNOWN_NOISE_GAMMAS) * 4
