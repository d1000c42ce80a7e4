"""Training stages: the step loop they share, the VAE and diffusion stages, their configuration and run set-up."""
