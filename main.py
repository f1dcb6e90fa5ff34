"""pixdiff_jax command line: train, sample from and inspect pixel-aware diffusion models.

Modes (--mode), one example each:

  train   (default) train every stage of a config into a workdir, resuming what is there:
            python main.py        # the main job: configs/fashion_mnist.py into runs/fmnist
            python main.py --stage distill    # only the one-pass student (after reverse)
  sample  generate images with the networks of a workdir (its stored config.json):
            python main.py --mode sample --workdir runs/fmnist --num_samples 64
            python main.py --mode sample --config.sampling.preset=distilled   # one call
  info    parameter counts of a config's networks, and XLA's memory plan of each stage's train
          step compiled for this machine (nothing runs; --nomemory_plan: counts only):
            python main.py --mode info --config configs/cifar10.py
  eval    sample quality (FD_efflite0, FID), cost and speed of sampler settings (config.eval):
            python main.py --mode eval --workdir runs/fmnist --config.eval.num_samples=2000
  compare one table over evaluated workdirs:
            python main.py --mode compare --workdirs runs/fmnist,runs/ddpm_fmnist
  figures the paper's figures for a workdir:
            python main.py --mode figures --workdir runs/fmnist

Without --config, train mode uses WORKDIR/config.json if it exists and configs/fashion_mnist.py
otherwise; sample, eval and figures always take the networks from WORKDIR/config.json, and a
--config only supplies the sampler settings (eval and figures: the eval section, and its networks
must match the workdir's). Any config field can be overridden, with or without --config, e.g. --config.training.batch_size=32 or --config.sampling.preset=paper.
"""
from pixdiff_jax.cli.main import run

if __name__ == '__main__':
  run()
