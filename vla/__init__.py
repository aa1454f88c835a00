"""Vision-language-action policy on a (spatially tuned) VLM backbone, as a LeRobot policy."""
