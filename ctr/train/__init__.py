"""Single-process training: objective, optimizers, epoch loop, evaluation, metrics, checkpoints.

Nothing here imports Ray or ``torchrec.distributed``; :mod:`ctr.distributed.worker` composes it.
"""
