"""A small Keras model on scikit-learn's bundled ``load_digits`` (no download)."""
