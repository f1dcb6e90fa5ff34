"""DDPM baseline on CIFAR-10 (Ho et al. 2020): 35.7M-parameter U-Net, linear betas
1e-4..0.02, T = 1000, data in [-1, 1]; the same backbone code as the pixel-aware model.

Built on ``configs/cifar10.py``: the data section (dataset, path, flips) and the U-Net trunk
are shared; only the method, the schedule, the one-head model and the training/sampling
settings of Ho et al. differ.
"""
from pixdiff_jax.config import sibling_config


def get_config():
  config = sibling_config(__file__, 'cifar10').get_config()
  config.method = 'ddpm'

  config.diffusion.num_steps = 1000
  config.diffusion.schedule = 'linear'
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02

  # The trunk of configs/cifar10.py (ch 128, ch_mult (1, 2, 2, 2), 2 residual blocks,
  # attention at 16x16, dropout 0.1) without the heads and the scale fusion.
  config.model.name = 'unet'

  config.training.vae_steps = 0
  config.training.reverse_steps = 800_000
  config.training.steps_per_dispatch = 5
  config.optim.lr = 2e-4

  config.sampling.preset = 'custom'
  config.sampling.sampler = 'ddpm'
  config.sampling.num_steps = 100
  config.sampling.eta = 0.0
  config.sampling.clip_denoised = True
  config.sampling.batch_size = 256
  return config
