"""A ~2 M-parameter CNN on generated 32×32×3 images, for throughput (no download)."""
