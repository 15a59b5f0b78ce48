"""r2i-hpc agent package."""
