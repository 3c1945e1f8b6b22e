"""AutoInt and AutoInt+ (Song et al., CIKM 2019): multi-head self-attention over field vectors.

Every field, numeric ones included (``value · v_m``), is one token of the attention. Two block
variants (see ``docs/methods.md`` §1):

* ``reference`` (default; the official TF code that produced the README numbers): Q, K, V and the
  residual projection are dense layers with bias followed by ReLU, scores are scaled by
  ``1/sqrt(d')``, and ``LayerNorm`` follows ``ReLU(heads + residual)``.
* ``paper``: Q, K, V and W_Res are linear maps without bias, unscaled dot products, no LayerNorm.

AutoInt+ (``name: autoint_plus``) adds the logit of an MLP that reads the flattened **input**
field vectors (a logit sum, not an MLP stacked on the attention output). ``use_wide`` adds the
first-order logit of the official ``has_wide`` option.
"""

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings.base import FieldEmbedding
from ctr.embeddings.tables import EmbeddingDim
from ctr.models.layers.field_attention import packed_field_attention
from ctr.models.layers.init import init_dense_
from ctr.models.layers.linear import require_first_order
from ctr.models.layers.mlp import MLP, DNNOptions

Variant = Literal["reference", "paper"]
PLUS_DNN_DEFAULT = (400, 400)  # the official AutoInt+ run script
LAYER_NORM_EPS = 1e-8  # the official ``normalize`` helper

torch.fx.wrap("packed_field_attention")  # an FX leaf: it picks its kernel from the tensors' device and dtype


class AutoIntConfig(DNNOptions):
    """YAML ``model:`` section of AutoInt (``name: autoint``) and AutoInt+ (``name: autoint_plus``).

    Args:
        name (str): ``autoint`` (attention only) or ``autoint_plus`` (attention + DNN logits).
        embedding_dim (int): field vector width D (a multiple of 4).
        attention_layers (int): number of stacked interacting blocks L.
        num_heads (int): heads H per block.
        attention_dim (int): per-head width d'; every block outputs H·d' per field.
        variant (str): ``reference`` (official code) or ``paper`` block, see the module docstring.
        attention_dropout (float): dropout on the attention weights.
        embedding_dropout (float): dropout on the field vectors (shared by attention and DNN).
        use_wide (bool): add a first-order logit (official ``has_wide``).
        dnn_hidden (tuple[int, ...]): AutoInt+ DNN widths; default ``()`` for ``autoint`` and
            ``(400, 400)`` for ``autoint_plus``; must be empty exactly when ``name`` is ``autoint``.
        dnn_activation (str): DNN activation.
        dnn_dropout (float): dropout after each DNN hidden layer.
        dnn_batchnorm (bool): batch norm in the DNN.
    """

    name: Literal["autoint", "autoint_plus"] = "autoint"
    embedding_dim: EmbeddingDim = 16
    attention_layers: PositiveInt = 3
    num_heads: PositiveInt = 2
    attention_dim: PositiveInt = 32
    variant: Variant = "reference"
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    embedding_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    use_wide: bool = False
    dnn_hidden: tuple[PositiveInt, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _default_dnn(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("dnn_hidden") is None:
            data = {**data, "dnn_hidden": PLUS_DNN_DEFAULT if data.get("name") == "autoint_plus" else ()}
        return data

    @model_validator(mode="after")
    def _check_dnn(self) -> "AutoIntConfig":
        if self.name == "autoint" and self.dnn_hidden:
            raise ValueError(f"dnn_hidden={list(self.dnn_hidden)} needs name 'autoint_plus' "
                             "(plain 'autoint' has no DNN)")
        if self.name == "autoint_plus" and not self.dnn_hidden:
            raise ValueError("name 'autoint_plus' needs a non-empty dnn_hidden (default [400, 400])")
        return self

    @property
    def block_width(self) -> int:
        return self.num_heads * self.attention_dim


def _relu(y: torch.Tensor) -> torch.Tensor:
    """ReLU of a linear layer's ``[B, F, ·]`` output: in place where nothing records gradients (evaluation and
    serving: no second activation tensor; the int8 scorer's model call took 17–19% less time at 512 rows and
    3–5% at 64, interleaved A/B). Under autograd out of place:
    that output is a view of the matmul's 2-D result, and an in-place op on a view makes backward rebuild the
    whole base's gradient (``CopySlices``), which cost more than the copy saved."""
    return torch.relu(y) if torch.is_grad_enabled() else y.relu_()


class InteractingLayer(nn.Module):
    """One interacting block: ``[B, F, I] -> [B, F, H·d']``.

    Per head h: ``α(m, ·) = softmax_k(⟨Q_h e_m, K_h e_k⟩ · s)`` over all F fields (m included),
    ``head_h(m) = Σ_k α(m, k) V_h e_k``; then ``out_m = ReLU(concat_h head_h(m) + W_Res e_m)``.
    ``reference``: Q/K/V/W_Res = ReLU(dense with bias), s = 1/sqrt(d'), LayerNorm on ``out``.
    ``paper``: Q/K/V/W_Res linear without bias, s = 1, no LayerNorm.

    Args:
        in_dim (int): input width I (D for the first block, H·d' after).
        num_heads (int): heads H.
        head_dim (int): per-head width d'.
        variant (str): ``reference`` or ``paper``.
        dropout (float): dropout on the attention weights.

    Example::

        >>> block = InteractingLayer(in_dim=4, num_heads=2, head_dim=3, variant="reference")
        >>> block(torch.randn(5, 6, 4)).shape  # B=5, F=6
        torch.Size([5, 6, 6])
    """

    def __init__(self, in_dim: int, num_heads: int, head_dim: int, variant: Variant = "reference",
                 dropout: float = 0.0) -> None:
        super().__init__()
        width, bias = num_heads * head_dim, variant == "reference"
        self.num_heads, self.head_dim, self.reference = num_heads, head_dim, variant == "reference"
        self.query = nn.Linear(in_dim, width, bias=bias)
        self.key = nn.Linear(in_dim, width, bias=bias)
        self.value = nn.Linear(in_dim, width, bias=bias)
        self.residual = nn.Linear(in_dim, width, bias=bias)  # W_Res, one per block
        self.scale = head_dim ** -0.5 if self.reference else 1.0
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS) if self.reference else nn.Identity()
        init_dense_(self)

    def _project(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        y = layer(x)  # [B, F, H·d']
        return _relu(y) if self.reference else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Q, K and V in one matmul whose [B, F, 3·H·d'] output the attention kernel reads in place
        # (the weights stay separate parameters, concatenated per call). W_Res stays its own matmul:
        # slicing it off the same output would cost a copy in backward.
        weight = torch.cat((self.query.weight, self.key.weight, self.value.weight))
        bias = torch.cat((self.query.bias, self.key.bias, self.value.bias)) if self.reference else None
        qkv = F.linear(x, weight, bias)
        if self.reference:
            qkv = _relu(qkv)
        qkv = qkv.unflatten(-1, (3, self.num_heads, self.head_dim))  # [B, F, 3, H, d']
        heads = packed_field_attention(qkv, self.scale,
                                       dropout_p=self.dropout.p if self.training else 0.0)  # [B, F, H, d']
        out = (heads.flatten(2) + self._project(self.residual, x)).relu_()  # [B, F, H·d'], a fresh tensor
        return self.norm(out)


class AutoInt(nn.Module):
    """AutoInt / AutoInt+: ``(dense [B, N], sparse KJT) -> logits [B]``::

        e     = embedding(dense, sparse)              # [B, F, D], numeric fields included
        h     = blocks(e)                             # L interacting blocks -> [B, F, H·d']
        logit = head(h.flatten(1))                    # [B, F·H·d'] -> [B]
              + dnn(e.flatten(1))      (AutoInt+)     # [B, F·D] -> [B], on the INPUT vectors
              + first_order(dense, sparse)  (wide)    # [B]

    Args:
        embedding (FieldEmbedding): field vectors ``[B, F, D]``.
        first_order (FieldEmbedding | None): width-4 first-order embedding; required iff ``use_wide``.
        config (AutoIntConfig): options (``name`` picks AutoInt or AutoInt+).

    Example::

        >>> from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
        >>> from ctr.features.layout import FieldLayout
        >>> from ctr.features.schema import Schema
        >>> layout = FieldLayout(Schema(fields=[{"name": "u"}, {"name": "x", "kind": "numeric"}]), {"u": 10})
        >>> cfg = AutoIntConfig(name="autoint_plus", embedding_dim=8, attention_dim=4, dnn_hidden=(16,))
        >>> model = AutoInt(PlainEmbedding(layout, 8, PlainEmbeddingConfig()), None, cfg)
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        >>> model(torch.ones(2, 1), kjt).shape
        torch.Size([2])
    """

    needs_first_order = False  # only with use_wide; build_model checks AutoIntConfig.use_wide

    def __init__(self, embedding: FieldEmbedding, first_order: FieldEmbedding | None,
                 config: AutoIntConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = embedding
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.blocks = nn.Sequential(*[
            InteractingLayer(embedding.embedding_dim if i == 0 else config.block_width, config.num_heads,
                             config.attention_dim, config.variant, config.attention_dropout)
            for i in range(config.attention_layers)])
        self.head = nn.Linear(embedding.num_fields * config.block_width, 1)
        init_dense_(self.head)
        self.dnn = self._dnn(embedding, config)
        self.wide = require_first_order(first_order, "AutoInt with use_wide") if config.use_wide else None

    @staticmethod
    def _dnn(embedding: FieldEmbedding, config: AutoIntConfig) -> MLP | None:
        if not config.dnn_hidden:
            return None
        spec = config.mlp_spec()
        return MLP(embedding.num_fields * embedding.embedding_dim, spec, out_dim=1)

    def attention_logit(self, fields: torch.Tensor) -> torch.Tensor:
        """``[B, F, D] -> [B]``: interacting blocks, flatten, linear head."""
        return self.head(self.blocks(fields).flatten(1)).squeeze(-1)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        fields = self.embedding_dropout(self.embedding(dense, sparse))  # [B, F, D]
        logit = self.attention_logit(fields)  # [B]
        if self.dnn is not None:
            logit = logit + self.dnn(fields.flatten(1)).squeeze(-1)
        if self.wide is not None:
            logit = logit + self.wide(dense, sparse)
        return logit
