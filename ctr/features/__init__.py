"""Shared preprocessing: the only code that turns raw rows into ids and tensors (training and serving)."""
