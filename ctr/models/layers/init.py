"""Weight initialisation shared by the models: Glorot for dense layers, zero biases."""

from torch import nn


def init_dense_(module: nn.Module) -> None:
    """Glorot-normal weights and zero biases for every ``nn.Linear`` inside ``module``.

    Follows the official AutoInt code (Glorot-normal dense weights); embedding tables
    (``EmbeddingBagCollection``) and numeric field vectors are left to the embedding method.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
