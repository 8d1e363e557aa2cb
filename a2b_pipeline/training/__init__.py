"""What the training loop uses: device and precision, schedule, torchrun plumbing, tracking, progress."""
