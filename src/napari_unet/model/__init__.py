"""U-Net architecture and safe checkpoints."""
