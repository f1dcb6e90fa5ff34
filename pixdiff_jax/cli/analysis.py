"""The command-line front of ``--mode eval``, ``--mode compare`` and ``--mode figures``.

The CLI only dispatches here; the work is in ``pixdiff_jax.evaluation``. The networks
always come from the workdir's ``config.json``; a ``--config`` given on the command line must
describe the same networks and supplies the ``eval`` section (e.g.
``--config configs/fashion_mnist.py --config.eval.num_samples=500``).
"""
from __future__ import annotations

from pixdiff_jax import config as config_lib, evaluation


def run(mode: str, config, *, workdir: str | None, workdirs: list[str],
        compare_out: str) -> dict:
  """Runs one mode and returns the JSON summary main.py prints."""
  if mode == 'compare':
    out = evaluation.compare(list(workdirs), compare_out)
    return {'markdown': out['markdown'], 'json': compare_out + '.json', 'rows': len(out['rows'])}
  if workdir is None:
    raise evaluation.EvalError(f'--workdir is required for --mode {mode}')
  stored = config_lib.load_config(workdir)
  if config is not None:
    config_lib.check_compatible(stored, config)
  ev = config_lib.eval_config_for(stored, config)
  if mode == 'eval':
    from pixdiff_jax.storage import workdir_lock  # pylint: disable=g-import-not-at-top
    with workdir_lock.hold(workdir, 'eval'):  # one eval at a time writes WORKDIR/eval
      results = evaluation.evaluate(workdir, ev)
    return {'results': f'{workdir}/{evaluation.EVAL_DIR}/results.json',
            'markdown': f'{workdir}/{evaluation.EVAL_DIR}/results.md',
            'settings': [{k: r[k] for k in evaluation.RESULT_COLUMNS}
                         for r in results['settings']]}
  if mode == 'figures':
    from pixdiff_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
    return figures.make_figures(workdir, ev)
  raise evaluation.EvalError(f'unknown mode {mode!r}')
