"""Stage one: chest X-ray datasets, preprocessing, the Flax ResNet50 and the Zarr feature store."""

import os

__version__ = "0.1.0"

# transformers (the ResNet's config and the PyTorch checkpoint reader) prints advice at import when
# PyTorch is absent ("PyTorch was not found. Models won't be available ..."), which suggests that the
# toolkit needs it: it does not (the ResNet is Flax). Only its *advisory* warnings are off; its real
# warnings and errors still show. Set TRANSFORMERS_NO_ADVISORY_WARNINGS= (empty) to see them too.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
