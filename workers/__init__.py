"""The model, optimizer, checkpoints, the batch ring, the engine and its workers, and the training loop."""
