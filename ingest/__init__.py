"""Text extraction, the drop folder, the token store and the batcher."""
