"""What a mode prints at its end: the files it wrote."""
from __future__ import annotations

import os
import sys


def files_written(workdir: str) -> list[str]:
  """Human-readable lines naming what a train run left in ``workdir``."""
  lines = []
  ckpt_root = os.path.join(workdir, 'checkpoints')
  for stage in sorted(os.listdir(ckpt_root)) if os.path.isdir(ckpt_root) else []:
    if stage.endswith('-broken'):
      lines.append(f'  {"moved aside":<13} {os.path.join(ckpt_root, stage)}  (unreadable steps)')
      continue
    steps = sorted(int(d) for d in os.listdir(os.path.join(ckpt_root, stage)) if d.isdigit())
    if steps:
      lines.append(f'  {"checkpoints":<13} {os.path.join(ckpt_root, stage, str(steps[-1]))}  '
                   f'(stage {stage}, step {steps[-1]})')
  for name, what in (('config.json', 'the config of this run'),
                     ('metrics.jsonl', 'one JSON line per logged step')):
    if os.path.exists(os.path.join(workdir, name)):
      lines.append(f'  {name:<13} {os.path.join(workdir, name)}  ({what})')
  pairs = os.path.join(workdir, 'distill', 'pairs.json')
  if os.path.exists(pairs):
    import json  # pylint: disable=g-import-not-at-top
    with open(pairs, encoding='utf-8') as f:
      meta = json.load(f)
    lines.append(f'  {"distill pairs":<13} {os.path.join(workdir, "distill", "pairs")}  '
                 f"({meta['num_pairs']} teacher pairs, made in {meta['teacher_seconds']:.0f} s)")
  samples = os.path.join(workdir, 'samples')
  if os.path.isdir(samples):
    pngs = sorted((f for f in os.listdir(samples) if f.endswith('.png')),
                  key=lambda f: os.path.getmtime(os.path.join(samples, f)))
    if pngs:
      lines.append(f'  {"samples":<13} {samples}/  ({len(pngs)} PNG grids, newest {pngs[-1]})')
  tb = os.path.join(workdir, 'tensorboard')
  if os.path.isdir(tb):
    lines.append(f'  {"tensorboard":<13} tensorboard --logdir {tb}')
  return lines


def report(title: str, lines: list[str]) -> None:
  """The end-of-mode summary, on stderr (stdout carries the JSON result where there is one)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print('\n'.join([title, *lines]), file=sys.stderr, flush=True)
