"""DDPM baseline on Fashion-MNIST: the backbone of ``fashion_mnist.py`` with one epsilon head,
linear betas 1e-4..0.02, T = 1000, data in [-1, 1] (Ho et al. 2020), trained for the main
job's wall-clock budget on 2 CPU cores."""
from pixdiff_jax.config import sibling_config


def get_config():
  config = sibling_config(__file__, 'fashion_mnist').get_config()
  config.method = 'ddpm'
  config.model.name = 'unet'
  config.diffusion.num_steps = 1000
  config.diffusion.schedule = 'linear'
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02
  config.training.vae_steps = 0
  # The main job's wall-clock budget (configs/fashion_mnist.py, all three stages) for this
  # training and its distill stage together (docs/results.md, section 8).
  config.training.reverse_steps = 2400
  config.sampling.preset = 'custom'
  config.sampling.sampler = 'ddim'
  config.sampling.num_steps = 50
  config.sampling.eta = 0.0
  config.sampling.clip_denoised = True
  # Its distill stage (the main job's sizes, fashion_mnist.py): a one-head student of
  # DPM-Solver++(2M)-10, read as the clean image from x_T (1 call) and from the midpoint where
  # abar first falls to 0.5 (2 calls); docs/design.md section 7.
  config.distill.teacher_steps = 10
  config.distill.mid_step = 0
  # The student's output layer starts at zero: its output is read as the clean image, the
  # teacher's layer writes noise estimates (docs/design.md section 7; results section 8).
  config.distill.output_init = 'zero'
  return config
