"""Training: train state and optimiser (``state``), losses (``losses``), Orbax checkpoints
(``checkpointing``) and the staged pmap training loop (``trainer``)."""
