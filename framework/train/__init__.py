"""Training: the LightningModule, chunked losses, optimizer groups, checkpoints, the run driver."""
