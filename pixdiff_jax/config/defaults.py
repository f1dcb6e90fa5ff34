"""Shared configuration structure and defaults of every pixdiff_jax experiment.

Each experiment config (``configs/cifar10.py`` ...) starts from ``get_default_config()`` and
overrides fields; a stored ``config.json`` of an older version gets the fields it lacks from here
(:func:`eval_config_for`). Field groups:

- ``data``:      what is trained on and how it is scaled.
- ``diffusion``: the forward process (pixel-aware or the scalar DDPM baseline schedule).
- ``vae``:       the scale estimator ``G`` (stage 1); unused by the DDPM baseline.
- ``model``:     the reverse model ``R`` (T-headed U-Net) or the one-head baseline U-Net.
- ``training``:  steps, batch size, logging/checkpoint cadence, EMA.
- ``optim``:     optax Adam with warmup and gradient clipping.
- ``distill``:   the optional third stage: a one-pass student distilled from the trained model's
                 deterministic sampler (docs/design.md section 7).
- ``sampling``:  which sampler and its settings (``preset`` picks named bundles).
- ``eval``:      ``--mode eval`` (sample counts, sampler settings, Frechet metrics).
"""
from __future__ import annotations

import ml_collections


def get_default_config() -> ml_collections.ConfigDict:
  """The complete default config: every field of every section, documented below."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # 'pixel_aware': two stages (VAE, then T-headed reverse model). 'ddpm': one-head baseline.
  config.method = 'pixel_aware'
  config.data = _data()
  config.diffusion = _diffusion()
  config.vae = _vae()
  config.model = _model(config.diffusion)
  config.training = _training()
  config.optim = _optim()
  config.distill = _distill()
  config.sampling = _sampling()
  config.eval = _eval()
  return config


def _data() -> ml_collections.ConfigDict:
  """``config.data``: what is trained on and how it is scaled."""
  data = ml_collections.ConfigDict()
  # 'fashion_mnist' | 'mnist' | 'cifar10' (cifar-10-python.tar.gz) | 'celeba'
  # (img_align_celeba.zip or folder) | 'npz' | 'folder' | 'tfds:<name>' (e.g. 'tfds:cifar10').
  data.dataset = 'fashion_mnist'
  data.path = ''             # directory / file overriding the default location of the data
  data.download = False      # cifar10 only: download the archive to data.path if it is missing
  data.split = 'train'
  data.image_size = 32
  data.num_channels = 1
  data.pad_to_image_size = True  # 28x28 MNIST-like images are zero-padded to image_size
  data.center_crop = 0       # >0: crop the central KxK square, resize to image_size (CelebA: 140)
  data.random_flip = False
  data.dequantize = False    # uniform dequantisation of the 8-bit values
  data.max_examples = 0      # 0 = all; >0 takes the first N (tests, quick checks)
  return data


def _diffusion() -> ml_collections.ConfigDict:
  """``config.diffusion``: the forward process (pixel-aware, or the baseline's scalar schedule)."""
  diffusion = ml_collections.ConfigDict()
  diffusion.num_steps = 200    # T
  diffusion.gamma = 20.0       # pixel-aware rate; eq. 7-9
  diffusion.eps = 4e-3         # x0 lies in [eps, 1]
  # Head targets of the reverse model: 'cumulative' (paper, eps_tilde_j), 'increment'
  # (u_j of the chain's own step noise: with it Algorithm 1 at eta=0 inverts the chain),
  # 'v' (v-parametrisation on the per-pixel schedule) or 'x0' (the clean image itself).
  diffusion.target = 'cumulative'
  # Weight of the diagonal head j = i in the reverse loss (1 = eq. 15, every active head alike).
  diffusion.diagonal_weight = 1.0
  # Heads evaluated per example in the reverse loss: 0 = all T (masked to the active j <= i,
  # eq. 15 exactly); n >= 2 = the diagonal head plus n - 1 random active heads, weighted so that
  # the expected loss is eq. 15's (losses.select_heads); the heads then cost n / T.
  diffusion.heads_per_example = 0
  # Per-pixel weights of the reverse loss: 'none' (eq. 15) or 'min_snr' (Min-SNR-gamma, Hang et
  # al. 2023, on the per-pixel schedule's abar/(1-abar): schedules.min_snr_weight).
  diffusion.loss_weighting = 'none'
  diffusion.min_snr_gamma = 5.0
  # Scale fed to R while training: 'vae' (frozen stage-1 estimate G(x_i, i)), 'vae_at_T' (G(x_T, T)
  # of the same chain for every step, like the scale prior at sampling time) or 'true'.
  diffusion.scale_source = 'vae'
  # Scalar schedule of the DDPM baseline: 'linear' (1e-4..0.02) or 'cosine'.
  diffusion.schedule = 'linear'
  diffusion.beta_start = 1e-4
  diffusion.beta_end = 0.02
  return diffusion


def _vae() -> ml_collections.ConfigDict:
  """``config.vae``: the scale estimator G (stage 1; unused by the DDPM baseline)."""
  vae = ml_collections.ConfigDict()
  vae.name = 'scale_vae'
  vae.ch = 64
  vae.ch_mult = (1, 2, 2, 2)   # len-1 downsamplings: 32x32 -> 4x4 bottleneck
  vae.num_res_blocks = 1
  vae.latent_dim = 256
  vae.num_groups = 8
  vae.kl_weight = 1e-3
  vae.loss_space = 'scale'      # MSE on x_delta (docs/design.md 2) | 'x0': on the implied image
  # Compute dtype: 'float32' | 'bfloat16' (accelerators; parameters, optimiser state and loss
  # stay float32; on the CPU bfloat16 is slower, and the command line says so).
  vae.dtype = 'float32'
  return vae


def _model(diffusion: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config.model``: the reverse model R (T-headed U-Net) or the one-head baseline U-Net;
  ``num_heads`` follows ``diffusion.num_steps``."""
  model = ml_collections.ConfigDict()
  model.name = 'thead_unet'    # 'thead_unet' | 'unet' (one-head baseline)
  model.ch = 64
  model.ch_mult = (1, 2, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (8,)
  model.dropout = 0.0
  model.num_groups = 8
  model.num_heads = diffusion.get_ref('num_steps')  # one head per reverse step
  model.head_ch = 16
  model.head_num_res_blocks = 2
  model.head_attention = False
  # Heads predict a correction added to the scale's implied clean image -log(x_delta_hat)/gamma
  # (needs diffusion.target='x0'); False = the paper's heads.
  model.residual_heads = False
  model.dtype = 'float32'      # compute dtype, as vae.dtype
  return model


def _training() -> ml_collections.ConfigDict:
  """``config.training``: steps, batch size, logging and checkpoint cadence, EMA."""
  training = ml_collections.ConfigDict()
  training.batch_size = 64      # global batch, split over local devices
  training.vae_steps = 2000      # stage 1 (ignored by method='ddpm')
  training.reverse_steps = 4000  # stage 2, or the single stage of method='ddpm'
  training.ema_decay = 0.999
  training.steps_per_dispatch = 1  # train steps fused with lax.scan per pmap call
  training.log_every = 50
  training.checkpoint_every = 500
  training.snapshot_every = 1000  # sample grid PNG (and at the end of a stage); 0 = never
  training.keep_checkpoints = 2
  training.ema_warmup = True     # EMA decay min(decay, (1+n)/(10+n))
  # Stop (exit 2) after this many consecutive updates with non-finite gradients (each one is
  # skipped); a checkpoint is only written while the parameters are finite.
  training.max_skipped_updates = 10
  # Device memory (GiB per device) the train step must fit in, checked against XLA's plan when
  # each stage's step compiles (one error line naming the fields to change if it does not).
  # 0 = what JAX reports (GPU/TPU: memory_stats()['bytes_limit']; CPU: host memory / devices);
  # > 0 = this limit, e.g. to check a config for a smaller card.
  training.memory_limit_gib = 0.0
  return training


def _optim() -> ml_collections.ConfigDict:
  """``config.optim``: optax Adam with warmup and gradient clipping."""
  optim = ml_collections.ConfigDict()
  optim.lr = 2e-4
  optim.warmup_steps = 500
  optim.b1 = 0.9
  optim.b2 = 0.999
  optim.eps = 1e-8
  optim.grad_clip = 1.0
  return optim


def _distill() -> ml_collections.ConfigDict:
  """``config.distill``: the optional third stage (``steps > 0``).

  A student initialised from the trained model's EMA parameters learns to reproduce, from x_T in
  one pass, what the model's deterministic sampler makes from that x_T (Luhman & Luhman 2021).
  Pixel-aware: the teacher is the K=T 'consistent' sampler (x0_jump, eta 0, clip, scale prior);
  head j of the student regresses onto the teacher's clean-image estimate at step j. DDPM: the
  teacher is DPM-Solver++(2M) with teacher_steps steps; the one-head student predicts the
  teacher's final image from x_T (and from the midpoint, for two calls). Pairs (x_T, trajectory)
  are made once by the jitted teacher and cached in WORKDIR/distill/.
  """
  distill = ml_collections.ConfigDict()
  distill.steps = 0             # optimiser steps of the stage; 0 = no distill stage
  distill.batch_size = 32       # pairs per step (global, split over devices)
  distill.lr = 1e-4             # Adam, as optim (b1, b2, eps, grad_clip) otherwise
  distill.warmup_steps = 0
  distill.num_pairs = 4096      # pairs the teacher makes (once; a cache in WORKDIR/distill)
  distill.teacher_batch = 128   # pairs per call of the jitted teacher
  # Network calls of the student samplers it is trained for: each K adds its call steps as
  # training inputs (pixel-aware: samplers.block_starts(T, K); DDPM: K in (1, 2)). The presets
  # 'distilled' and 'distilled_K2' use K = 1 and 2.
  distill.calls = (1, 2)
  distill.final_weight = 1.0    # pixel-aware: weight of head 1 (the final image) vs each other
  # Pixel-aware: heads per example in the loss: 0 = every active head; n >= 2 = head 1 plus
  # n - 1 random other active heads (unbiased, as diffusion.heads_per_example).
  distill.heads_per_example = 0
  distill.teacher_steps = 10    # DDPM: S of the DPM-Solver++(2M) teacher
  distill.mid_step = 0          # DDPM: step n of the second call; 0 = first n with abar_n <= 0.5
  # DDPM: the student's output layer at the start: 'teacher' (the teacher's, which writes noise
  # estimates) or 'zero' (the rest of the network the teacher's; the student's first output is 0
  # instead of ~x_T, as a clean-image read needs). The pixel-aware heads already read clean
  # images: 'teacher' only.
  distill.output_init = 'teacher'
  return distill


def _sampling() -> ml_collections.ConfigDict:
  """``config.sampling``: the sampler and its settings (``preset`` picks named bundles)."""
  sampling = ml_collections.ConfigDict()
  # 'paper' forces K=1, eta=1, no clipping, prior='standard' (with target='cumulative').
  # 'custom' uses the fields below as given.
  sampling.preset = 'custom'
  # 'pixel_aware' (K network calls of the T-headed model; 'parallel' is an older name of it) |
  # 'ddpm' | 'ddim' | 'dpm_solver'
  sampling.sampler = 'pixel_aware'
  sampling.network_calls = 1    # K for the pixel-aware sampler
  sampling.eta = 0.0
  sampling.clip_denoised = True
  sampling.prior = 'scale'      # 'standard' (paper) | 'scale'
  # 'recursion' (Algorithm 1 per block) | 'x0_jump' (clean-image estimate, then DDIM step) |
  # 'x0_steps' (every step of a block a DDIM step with its own head's clean image: the distilled
  # student's read; samplers.block_sequential_reverse)
  sampling.update = 'recursion'
  sampling.num_steps = 50       # S for DDIM / DPM-Solver
  sampling.batch_size = 64
  sampling.use_ema = True
  # Sample with the distill stage's student instead of the trained model (the presets
  # 'distilled' and 'distilled_K2' set it, with network_calls 1 or 2).
  sampling.distilled = False
  return sampling


def _eval() -> ml_collections.ConfigDict:
  """``config.eval``: ``--mode eval`` (sample counts, sampler settings, Frechet metrics)."""
  ev = ml_collections.ConfigDict()
  # Comma-separated sampler settings (evaluation/settings.py, parse_setting); '' = the
  # method's default list: pixel-aware 'paper,consistent,x0_jump_K1,x0_jump_K2,x0_jump_K5,
  # x0_jump_KT,vae_prior'; DDPM 'ddpm,ddim_10,ddim_20,ddim_50,ddim_100,dpm_solver_10,
  # dpm_solver_20'; both with 'distilled,distilled_K2' added when the workdir has a distill
  # stage.
  ev.samplers = ''
  ev.num_samples = 2000         # images generated and scored per setting
  # Fewer samples for settings too slow for num_samples, 'name:n,...' (DDPM's 1000 steps on a
  # CPU); such a row is scored against a real-vs-real floor at its own count.
  ev.num_samples_by_setting = 'ddpm:200'
  ev.batch_size = 250           # images per sampler call (fewer if needed for timing_batches)
  ev.timing_batches = 3         # at least this many timed batches (after compilation) per setting
  ev.seed = 0
  ev.reference_split = 'test'   # the split the samples are compared with (all of its images)
  ev.floor_split = 'train'      # real-vs-real floor: this many random images of this split
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth; '' = no FID (FD_efflite0 only).
  ev.inception_weights = ''
  ev.efflite0_weights = ''      # '' = the converted weights the metrics package finds itself
  ev.reference_max_examples = 0  # tests only: > 0 uses the first N reference images, not all
  ev.grid_size = 64             # images in each setting's PNG grid
  return ev

def default_eval_config() -> ml_collections.ConfigDict:
  """The ``eval`` section of :func:`get_default_config` (``--mode eval`` / ``figures``)."""
  return get_default_config().eval


def eval_config_for(stored: ml_collections.ConfigDict,
                    given: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  """The eval settings: the command line's config if given, else the workdir's, else defaults.

  Workdirs trained before ``config.eval`` existed have no such section; every missing field is
  taken from :func:`default_eval_config`.
  """
  ev = default_eval_config()
  source = given if given is not None else stored
  if 'eval' in source:
    ev.update(source.eval)
  return ev

