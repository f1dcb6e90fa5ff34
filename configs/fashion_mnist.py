"""Fashion-MNIST on 2 CPU cores: the offline main job (three stages + samples; timing and scores
in docs/results.md sections 6.2 and 8).

Sized for the budget rather than for the paper: narrow networks, T = 10, gamma = 8, heads that
predict the clean image and are conditioned on the VAE's estimate from ``x_T``, two heads per
example in the loss. Why each value, with the measurements: docs/results.md section 6.3.
Sampling: the ``consistent`` preset with one network call per step. Data: the Debian package
``dataset-fashion-mnist`` (28x28 padded to 32x32).

Stage 3, ``distill`` (docs/design.md section 7): a one-pass student of the K = T ``consistent``
sampler, trained on teacher pairs made once and cached; head 1 (the final image) weighted 100x,
with one other random head per example. All three stages are sized to train within 20 minutes of
the README's first command on the 2-core CI machine; the measurements and what the sizes scored:
docs/results.md section 8.
"""
from pixdiff_jax.config import sibling_config


def get_config():
  config = sibling_config(__file__, 'default').get_default_config()
  config.data.dataset = 'fashion_mnist'
  config.data.image_size = 32
  config.data.num_channels = 1

  config.diffusion.num_steps = 10
  config.diffusion.gamma = 8.0
  config.diffusion.target = 'x0'
  config.diffusion.diagonal_weight = 5.0
  config.diffusion.scale_source = 'vae_at_T'
  config.diffusion.heads_per_example = 2

  config.vae.ch = 16
  config.vae.ch_mult = (1, 2, 2, 2)
  config.vae.num_res_blocks = 1
  config.vae.latent_dim = 32
  config.vae.kl_weight = 1.0
  config.vae.loss_space = 'x0'

  config.model.ch = 16
  config.model.ch_mult = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (8,)
  config.model.head_ch = 8
  config.model.head_num_res_blocks = 0
  config.model.head_attention = False

  config.training.batch_size = 32
  config.training.vae_steps = 600
  config.training.reverse_steps = 1000
  config.training.steps_per_dispatch = 1  # see train.get_p_train_step (CPU)
  config.training.log_every = 20
  config.training.checkpoint_every = 100
  config.training.snapshot_every = 100000
  config.training.ema_decay = 0.995

  config.optim.lr = 1e-3
  config.optim.warmup_steps = 50

  config.distill.steps = 1500
  config.distill.batch_size = 64
  config.distill.lr = 1e-4
  config.distill.num_pairs = 8192
  config.distill.teacher_batch = 256
  config.distill.calls = (1, 2)
  config.distill.final_weight = 100.0
  # Head 1 and one random other active head per example (unbiased): a cheaper student step
  # (docs/performance.md, "Distillation pairs"); quality against all heads not yet compared.
  config.distill.heads_per_example = 2

  config.sampling.preset = 'consistent'
  config.sampling.network_calls = 10
  config.sampling.batch_size = 64
  return config
