"""Training: patch sampling, losses and the training loop."""
