"""SkyReels-V2 diffusion forcing (diffusers' SkyReelsV2DiffusionForcing* pipelines): schedule, solver, latents."""
