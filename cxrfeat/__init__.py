"""Stage one: chest X-ray datasets, preprocessing, the Flax ResNet50 and the Zarr feature store."""

__version__ = "0.1.0"
