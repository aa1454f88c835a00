"""Visual Spatial Tuning: spatial data engine, backbone building, SFT / CoT cold start / GRPO, spatial benchmark."""
