"""progress.progress: tqdm in a terminal, one plain line per `every` units otherwise."""
import io

from tqdm import tqdm

from pixdiff_jax.utils import progress


def test_plain_lines_every_n_and_at_the_end():
  out = io.StringIO()
  bar = progress.PlainProgress(total=10, initial=2, desc='train vae', every=4, file=out)
  for _ in range(4):
    bar.set_postfix(loss='0.5')
    bar.update(2)  # 4, 6, 8, 10
  bar.close()
  lines = out.getvalue().splitlines()
  # Crossings of 4 and 8, then the end (10); no carriage returns.
  assert [line.split(',')[0] for line in lines] == [
      'train vae: 4/10 (40%) loss=0.5', 'train vae: 8/10 (80%) loss=0.5',
      'train vae: 10/10 (100%) loss=0.5']
  assert '\r' not in out.getvalue()


def test_no_duplicate_final_line_and_disable():
  out = io.StringIO()
  bar = progress.PlainProgress(total=4, desc='x', every=2, file=out)
  bar.update(4)
  bar.close()
  assert len(out.getvalue().splitlines()) == 1
  quiet = io.StringIO()
  bar = progress.PlainProgress(total=4, desc='x', every=1, file=quiet, disable=True)
  bar.update(4)
  bar.close()
  assert quiet.getvalue() == ''


def test_terminal_gets_tqdm():
  bar = progress.progress(total=3, interactive=True, disable=True)
  assert isinstance(bar, tqdm)
  bar.close()
  assert isinstance(progress.progress(total=3, interactive=False), progress.PlainProgress)


def test_every_s_prints_between_rare_crossings(monkeypatch):
  """A long run with slow units (a huge sample request) is not silent until 10% is done."""
  clock = [0.0]
  monkeypatch.setattr(progress.time, 'perf_counter', lambda: clock[0])
  out = io.StringIO()
  bar = progress.PlainProgress(total=1000, desc='sample', every=100, every_s=30, file=out)
  for _ in range(4):
    clock[0] += 20  # 20 s per unit: lines at 40 s and 80 s (>= 30 s after the last one)
    bar.update(1)
  assert [line.split(',')[0] for line in out.getvalue().splitlines()] == [
      'sample: 2/1000 (0%)', 'sample: 4/1000 (0%)']
