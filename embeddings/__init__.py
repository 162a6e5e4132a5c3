"""Item vectors from images and text with a CLIP-style dual encoder; zero-shot tagging and search."""
