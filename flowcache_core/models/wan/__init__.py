"""Wan2.1 / SkyReels-V2 DiT shared by the Wan-based families (config, model, diffusers-folder loader)."""
