"""Item vectors from images and text with a CLIP-style dual encoder; zero-shot tagging and search."""

import vitrine  # noqa: F401  (first: installs the filters of our dependencies' deprecation notices)

