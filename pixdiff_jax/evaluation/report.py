"""Results files and tables of ``--mode eval`` and ``--mode compare``.

``compare(workdirs, out_prefix)`` puts the rows of several evaluated workdirs into one table in
the shape of the paper's Table 1 (method, sampler, params, network evals, s/image, FD, FID).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from pixdiff_jax.errors import writing
from pixdiff_jax.evaluation.settings import EVAL_DIR, RESULT_COLUMNS, EvalError


def method_label(config) -> str:
  d = config.diffusion
  if config.method == 'ddpm':
    return f'DDPM (one-head U-Net, T={d.num_steps}, {d.schedule} betas)'
  return f'pixel-aware (T={d.num_steps} heads, gamma={d.gamma:g}, target={d.target})'



# ---------------------------------------------------------------------------- tables
def _fmt(value, kind: str) -> str:
  if value is None:
    return '-'
  if kind == 'int':
    return f'{int(value):,}'
  value = float(value)
  if not math.isfinite(value):  # never a NaN in a table
    raise EvalError(f'a non-finite number ({value}) reached a results table')
  return f'{value:.3g}' if kind == 'sec' else f'{value:.2f}'


def row_cells(r: dict) -> list[str]:
  return [_fmt(r['num_samples'], 'int'), _fmt(r['params'], 'int'),
          _fmt(r['network_evals'], 'int'), _fmt(r['seconds_per_image'], 'sec'),
          _fmt(r['fd_efflite0'], 'fd'), _fmt(r['fd_efflite0_floor'], 'fd'),
          _fmt(r.get('fid'), 'fd'), _fmt(r.get('fid_floor'), 'fd')]


_HEAD = ['n', 'params', 'network evals', 's/image', 'FD_efflite0', 'floor (real, same n)',
         'FID', 'FID floor']


def results_markdown(results: dict) -> str:
  m = results['machine']
  lines = [f"# Evaluation of {results['workdir']}", '',
           f"{results['method_label']}. Reference: all images of the "
           f"{_reference_text(results)}; floor: the same distance for n random training "
           f"images. Seconds per image: median over timed batches after compilation on "
           f"{m['platform']} ({m['device_kind']}, {m['cpu_count']} CPUs). Network evals: "
           'calls of the reverse model (pixel-aware rows also run the VAE once). FID '
           "'-': no Inception weights given (--config.eval.inception_weights).", '',
           '| setting | sampler | ' + ' | '.join(_HEAD) + ' |',
           '|---|---|' + '---:|' * len(_HEAD)]
  for r in results['settings']:
    lines.append(f"| {r['setting']} | {r['sampler']} | " + ' | '.join(row_cells(r)) + ' |')
  return '\n'.join(lines) + '\n'


def _reference_text(results: dict) -> str:
  rows = results['settings']
  if not rows:
    return 'reference split'
  ref = rows[0]['key']['reference']
  text = f"{ref['dataset']} {ref['split']} split"
  if ref['max_examples']:
    text += f" (first {ref['max_examples']} only: test setting)"
  return text


def compare(workdirs: list[str], out_prefix: str) -> dict:
  """One Table-1-shaped table over evaluated workdirs: ``<out_prefix>.md`` and ``.json``."""
  if not workdirs:
    raise EvalError('--workdirs is empty: give evaluated workdirs, e.g. --workdirs W1,W2')
  tables = []
  for w in workdirs:
    path = os.path.join(w, EVAL_DIR, 'results.json')
    if not os.path.isdir(w):
      raise EvalError(f'--workdirs: {w} does not exist' if not os.path.exists(w) else
                      f'--workdirs: {w} is a file, not a workdir')
    if not os.path.exists(path):
      raise EvalError(f'{path} not found: run python main.py --mode eval --workdir {w} first')
    tables.append(read_json(path, None))
  rows = []
  for t in tables:
    for r in t['settings']:
      rows.append({'method': t['method_label'], 'workdir': t['workdir'], **{
          k: r.get(k) for k in RESULT_COLUMNS}})
  out = {'rows': rows, 'machines': [t['machine'] for t in tables],
         'written': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}
  lines = ['| method | sampler | ' + ' | '.join(_HEAD) + ' |',
           '|---|---|' + '---:|' * len(_HEAD)]
  for r in rows:
    lines.append(f"| {r['method']} | {r['sampler']} | " + ' | '.join(row_cells(r)) + ' |')
  os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
  write_json(out_prefix + '.json', out)
  with open(out_prefix + '.md', 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  out['markdown'] = out_prefix + '.md'
  return out


# ---------------------------------------------------------------------------- files
def read_json(path, default):
  if path is None or not os.path.exists(path):
    return default
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def write_json(path: str, obj: Any) -> None:
  tmp = path + '.tmp'
  with writing(path):
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(obj, f, indent=2, allow_nan=False)
    os.replace(tmp, path)
