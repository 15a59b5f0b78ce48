"""r2i-hpc orchestrator package."""
