"""Where models come from: the embedded default and local paths."""
