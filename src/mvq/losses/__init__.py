"""Training losses: perceptual (LPIPS), discriminator and the stage-1 objective."""
