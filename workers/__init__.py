"""The model, optimizer, tokenizers, checkpoints and the training loop."""
