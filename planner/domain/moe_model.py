"""The model card: the architecture figures of an MoE (or dense) transformer that the cost model needs.

A card is a TOML file with a ``[model]`` table (fields of :class:`MoEModel`) and a ``[source]``
table saying where the figures come from. Parameter counts, FLOPs and bytes are derived here
(see :mod:`planner.cost.costmodel` for times). Units: sizes in elements, bytes in bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from planner.domain import fields as F
from planner.domain.errors import Collector

ATTENTION_KINDS = ("gqa", "mla")
# Bytes of one weight in the formats models ship in: 2- to 6-bit quantization, int8/fp8, bf16/fp16, fp32, fp64.
DTYPE_BYTES = (0.25, 0.375, 0.5, 0.625, 0.75, 1, 2, 4, 8)


@dataclass(frozen=True)
class MoEModel:
    """Architecture of a decoder-only transformer whose FFN blocks may be Mixture-of-Experts.

    Layer ``i`` is an MoE layer when ``num_experts > 0``, ``i >= first_dense_layers``,
    ``(i + 1) % moe_layer_step == 0`` and ``i not in dense_layers``; otherwise it is dense with an
    FFN of ``dense_intermediate_size``. Each routed expert and each shared expert is an FFN with
    ``ffn_matrices`` weight matrices (3 for SwiGLU, 2 for a classic MLP).
    """

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    num_experts: int
    top_k: int
    expert_intermediate_size: int
    dtype_bytes: float = 2.0
    dense_intermediate_size: int = 0
    first_dense_layers: int = 0
    moe_layer_step: int = 1
    dense_layers: tuple[int, ...] = ()
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0
    ffn_matrices: int = 3
    attention: str = "gqa"
    # Multi-head latent attention (DeepSeek-V2/V3); used only when attention == "mla".
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    tie_word_embeddings: bool = False
    family: str = ""
    hf_id: str = ""
    source: dict = field(default_factory=dict, compare=False)

    # ----- layer structure -------------------------------------------------------------------
    def is_moe_layer(self, i: int) -> bool:
        return (
            self.num_experts > 0
            and i >= self.first_dense_layers
            and (i + 1) % self.moe_layer_step == 0
            and i not in self.dense_layers
        )

    @cached_property
    def _moe_layers(self) -> tuple[int, ...]:
        # Computed once per model (the cost model and the validator ask for it on every pass).
        return tuple(i for i in range(self.num_layers) if self.is_moe_layer(i))

    @property
    def moe_layers(self) -> list[int]:
        return list(self._moe_layers)

    @property
    def num_moe_layers(self) -> int:
        return len(self._moe_layers)

    # ----- parameters (elements) -------------------------------------------------------------
    @property
    def attention_params(self) -> int:
        """Weights of one attention block (projections only; norms are negligible)."""
        h = self.hidden_size
        if self.attention == "mla":
            qk_head = self.qk_nope_head_dim + self.qk_rope_head_dim
            nh = self.num_attention_heads
            if self.q_lora_rank:
                q = h * self.q_lora_rank + self.q_lora_rank * nh * qk_head
            else:
                q = h * nh * qk_head
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_b = self.kv_lora_rank * nh * (self.qk_nope_head_dim + self.v_head_dim)
            o = nh * self.v_head_dim * h
            return q + kv_a + kv_b + o
        q = h * self.num_attention_heads * self.head_dim
        kv = 2 * h * self.num_kv_heads * self.head_dim
        o = self.num_attention_heads * self.head_dim * h
        return q + kv + o

    @property
    def expert_params(self) -> int:
        """Weights of one routed expert."""
        return self.ffn_matrices * self.hidden_size * self.expert_intermediate_size

    @property
    def shared_params(self) -> int:
        """Weights of all shared experts of one MoE layer."""
        return self.num_shared_experts * self.ffn_matrices * self.hidden_size * self.shared_expert_intermediate_size

    @property
    def router_params(self) -> int:
        return self.hidden_size * self.num_experts

    @property
    def dense_ffn_params(self) -> int:
        return self.ffn_matrices * self.hidden_size * self.dense_intermediate_size

    def layer_params(self, i: int) -> int:
        """All weights of layer ``i`` (attention + every expert, or the dense FFN)."""
        if self.is_moe_layer(i):
            ffn = self.num_experts * self.expert_params + self.shared_params + self.router_params
        else:
            ffn = self.dense_ffn_params
        return self.attention_params + ffn

    def layer_active_params(self, i: int) -> int:
        """Weights that one token touches in layer ``i`` (attention + top-k + shared, or dense FFN)."""
        if self.is_moe_layer(i):
            ffn = self.top_k * self.expert_params + self.shared_params + self.router_params
        else:
            ffn = self.dense_ffn_params
        return self.attention_params + ffn

    def layer_nonexpert_params(self, i: int) -> int:
        """Weights of layer ``i`` that are not routed experts (attention, router, shared experts or dense FFN)."""
        return self.layer_params(i) - (self.num_experts * self.expert_params if self.is_moe_layer(i) else 0)

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def total_params(self) -> int:
        head = 0 if self.tie_word_embeddings else self.lm_head_params
        return sum(self.layer_params(i) for i in range(self.num_layers)) + self.embedding_params + head

    @property
    def active_params(self) -> int:
        """Weights one token touches, counting the embedding row lookup as the full table (as model cards do)."""
        head = 0 if self.tie_word_embeddings else self.lm_head_params
        return sum(self.layer_active_params(i) for i in range(self.num_layers)) + self.embedding_params + head

    # ----- per-token figures ----------------------------------------------------------------
    @property
    def kv_bytes_per_token_per_layer(self) -> float:
        """KV-cache bytes one token adds to one layer."""
        if self.attention == "mla":
            return (self.kv_lora_rank + self.qk_rope_head_dim) * self.dtype_bytes
        return 2 * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def hidden_bytes_per_token(self) -> float:
        """Bytes of one token's hidden state (what crosses a pipeline cut uncompressed)."""
        return self.hidden_size * self.dtype_bytes

    def attention_score_flops_per_token(self, context: float) -> float:
        """FLOPs of QK^T and AV for one query token attending to ``context`` tokens (one layer)."""
        if self.attention == "mla":
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            return 2.0 * self.num_attention_heads * (qk + self.v_head_dim) * context
        return 4.0 * self.num_attention_heads * self.head_dim * context

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dense_layers"] = list(self.dense_layers)
        d.pop("source")
        return d


_INT_FIELDS = {
    "num_layers": dict(positive=True, maximum=10_000),
    "hidden_size": dict(positive=True, maximum=1_000_000),
    "num_attention_heads": dict(positive=True, maximum=100_000),
    "num_kv_heads": dict(positive=True, maximum=100_000),
    "head_dim": dict(positive=True, maximum=100_000),
    "vocab_size": dict(positive=True, maximum=100_000_000),
    "num_experts": dict(nonnegative=True, maximum=1_000_000),
    "top_k": dict(nonnegative=True, maximum=1_000_000),
    "expert_intermediate_size": dict(nonnegative=True, maximum=10_000_000),
}
OPTIONAL_INT_DEFAULTS = {
    "dense_intermediate_size": 0,
    "first_dense_layers": 0,
    "moe_layer_step": 1,
    "num_shared_experts": 0,
    "shared_expert_intermediate_size": 0,
    "ffn_matrices": 3,
    "q_lora_rank": 0,
    "kv_lora_rank": 0,
    "qk_nope_head_dim": 0,
    "qk_rope_head_dim": 0,
    "v_head_dim": 0,
}
KNOWN_FIELDS = (
    set(_INT_FIELDS) | set(OPTIONAL_INT_DEFAULTS)
    | {"name", "dtype_bytes", "dense_layers", "attention", "tie_word_embeddings", "family", "hf_id"}
)


def read_dtype_bytes(table: dict, table_path: str, col: Collector) -> float | None:
    """``dtype_bytes`` (default 2): the bytes of one weight, one of :data:`DTYPE_BYTES`."""
    value = F.number(table, "dtype_bytes", table_path, col, required=False, default=2.0, positive=True, maximum=16)
    if value is not None and value not in DTYPE_BYTES:
        col.add(f"{table_path}.dtype_bytes" if table_path else "dtype_bytes",
                f"must be the bytes of one weight: 0.5 (int4), 1 (int8, fp8), 2 (bf16, fp16), 4 (fp32), "
                f"8 (fp64), or 0.25 / 0.375 / 0.625 / 0.75 (2, 3, 5, 6 bits); got {value:g}")
        return None
    return value


def model_from_dict(table: dict, table_path: str, col: Collector, source: dict | None = None) -> MoEModel | None:
    """Check a ``[model]`` table and build the card; records every problem in ``col``."""
    before = len(col.problems)
    F.unknown_keys(table, KNOWN_FIELDS, table_path, col)
    values: dict[str, Any] = {"name": F.string(table, "name", table_path, col)}
    for key, opts in _INT_FIELDS.items():
        values[key] = F.number(table, key, table_path, col, integer=True, **opts)
    for key, default in OPTIONAL_INT_DEFAULTS.items():
        values[key] = F.number(table, key, table_path, col, integer=True, required=False,
                               default=default, nonnegative=True, maximum=10_000_000)
    values["dtype_bytes"] = read_dtype_bytes(table, table_path, col)
    values["attention"] = F.string(table, "attention", table_path, col, required=False,
                                   default="gqa", choices=ATTENTION_KINDS)
    values["tie_word_embeddings"] = F.boolean(table, "tie_word_embeddings", table_path, col, default=False)
    values["family"] = table.get("family", "") if isinstance(table.get("family", ""), str) else ""
    values["hf_id"] = table.get("hf_id", "") if isinstance(table.get("hf_id", ""), str) else ""
    dense = table.get("dense_layers", [])
    if not isinstance(dense, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in dense):
        col.add(f"{table_path}.dense_layers", f"must be a list of layer indices (integers >= 0), got {dense!r}")
        dense = []
    values["dense_layers"] = tuple(dense)
    if len(col.problems) > before:
        return None
    # Cross-field checks.
    if values["moe_layer_step"] < 1:
        col.add(f"{table_path}.moe_layer_step", "must be >= 1")
    if values["num_experts"] > 0:
        if not 1 <= values["top_k"] <= values["num_experts"]:
            col.add(f"{table_path}.top_k", f"must be between 1 and num_experts ({values['num_experts']}), got {values['top_k']}")
        if values["expert_intermediate_size"] <= 0:
            col.add(f"{table_path}.expert_intermediate_size", "must be > 0 when num_experts > 0")
    if values["num_kv_heads"] > values["num_attention_heads"]:
        col.add(f"{table_path}.num_kv_heads", "must be <= num_attention_heads")
    if values["ffn_matrices"] not in (2, 3):
        col.add(f"{table_path}.ffn_matrices", f"must be 2 (classic MLP) or 3 (gated, e.g. SwiGLU), got {values['ffn_matrices']}")
    if values["num_experts"] > 0 and not any(
        i >= values["first_dense_layers"] and (i + 1) % max(values["moe_layer_step"], 1) == 0 and i not in values["dense_layers"]
        for i in range(values["num_layers"])
    ):
        col.add(f"{table_path}.moe_layer_step",
                "num_experts > 0 but no layer is an MoE layer: check first_dense_layers, moe_layer_step and dense_layers")
    if values["attention"] == "mla" and (values["kv_lora_rank"] <= 0 or values["v_head_dim"] <= 0):
        col.add(f"{table_path}.kv_lora_rank", "attention = 'mla' needs kv_lora_rank > 0 and v_head_dim > 0")
    if len(col.problems) > before:
        return None
    model = MoEModel(**values, source=dict(source or {}))
    has_dense = any(not model.is_moe_layer(i) for i in range(model.num_layers))
    if has_dense and model.dense_intermediate_size <= 0 and model.num_layers > model.num_moe_layers:
        col.add(f"{table_path}.dense_intermediate_size", "must be > 0: the model has dense layers")
        return None
    return model
