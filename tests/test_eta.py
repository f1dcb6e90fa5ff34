"""utils.eta: a stage's step count and projected time; the plain progress lines' ETA."""
import io

from pixdiff_jax.utils import eta, progress


class _Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_projection_after_the_first_timed_steps_excludes_compilation():
  clock, lines = _Clock(), []
  c = eta.StageClock('reverse', start=0, total=1_500_000, batch_size=128, timed_steps=20,
                     timed_seconds=1e9, log=lines.append, clock=clock)
  assert lines == ['stage reverse: 1,500,000 steps, batch 128; the projected time follows the '
                   'first 20 timed steps (or 1e+09 s) after compilation']
  clock.now += 90.0  # the first dispatch compiles: not timed
  assert c.update(1) is None
  for step in range(2, 21):
    clock.now += 0.25
    assert c.update(step) is None  # 19 timed steps: not yet
  clock.now += 0.25
  line = c.update(21)
  assert c.seconds_per_step == 0.25 and line == lines[-1] and len(lines) == 2
  # 1,499,979 steps left at 0.25 s: 104 h 10 min (compilation's 90 s not extrapolated).
  assert 'steps 2-21; 1,499,979 steps to go: about 4 d 8 h (finishing around' in line
  assert "4 d 8 h for the stage's 1,500,000 steps of this run" in line
  clock.now += 5.0
  assert c.update(22) is None and len(lines) == 2  # once


def test_projection_by_seconds_and_resumed_stage():
  clock, lines = _Clock(), []
  c = eta.StageClock('vae', start=1000, total=1100, timed_steps=1000, timed_seconds=10.0,
                     log=lines.append, clock=clock)
  assert '1,100 steps (1,000 done, 100 to go)' in lines[0]
  c.update(1001)
  clock.now += 12.0  # 4 steps in 12 s: the seconds, not the step count, decide
  assert 'about 4 min 45 s' in c.update(1005)  # 95 steps left at 3 s
  quiet = eta.StageClock('vae', start=0, total=10, quiet=True, log=lines.append)
  quiet.update(1)
  assert len(lines) == 2


def test_format_duration():
  assert [eta.format_duration(s) for s in (0.4, 59, 61, 3599, 3600, 7199, 86400, 2e6)] == [
      '0 s', '59 s', '1 min 1 s', '59 min 59 s', '1 h 00 min', '2 h 00 min', '1 d 0 h',
      '23 d 4 h']


def test_plain_progress_shows_an_eta_from_the_second_update():
  out = io.StringIO()
  bar = progress.PlainProgress(total=100, desc='train reverse', every=10, file=out)
  bar.update(10)  # includes compilation: no rate yet
  bar.update(10)
  first, second = out.getvalue().splitlines()
  assert 'ETA' not in first and ', ETA ' in second
  bar.update(80)
  bar.close()
  assert 'ETA' not in out.getvalue().splitlines()[-1]  # finished


def test_plain_progress_is_silent_when_nothing_ran():
  out = io.StringIO()
  bar = progress.PlainProgress(total=6, desc='train vae', every=2, file=out)
  bar.close()  # e.g. the step did not fit the device: its one error line stays alone
  assert out.getvalue() == ''
