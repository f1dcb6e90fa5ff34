"""What a run keeps in its workdir: Orbax checkpoints of the training stages, read defensively
(``checkpointing``), and the lock that keeps two runs out of one workdir (``workdir_lock``).
Training writes here and sampling reads here; neither imports the other for it."""
