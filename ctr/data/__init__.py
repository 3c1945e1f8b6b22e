"""Training-side IO: raw files → split frames → encoded Parquet shards → rank-aware batches.

Serving never imports this package; it uses :mod:`ctr.features` directly.
"""
