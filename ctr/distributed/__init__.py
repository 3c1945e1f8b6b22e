"""Process groups and TorchRec sharding: the only package that imports ``torchrec.distributed``."""
