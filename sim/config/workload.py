"""Workload schema: a Transformer model plus the scenario it runs (phase, batch, lengths, precision)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from sim.config.types import DTYPE_BYTES, Bytes, Count, Dtype, Spec
from sim.errors import KeyedError

FAMILY_PHASES = {
    "bert": ("encode", "train"),
    "gpt": ("prefill", "decode", "generate", "train"),
    "llama": ("prefill", "decode", "generate", "train"),
}

#: Optimizer state per parameter, in state elements (each of `training.precision.optimizer_state`), and
#: FLOPs per parameter of one update (conventions, docs/model.md). Adafactor keeps factored second moments
#: (row and column sums: ~0 per parameter) and no first moment; `second_order` keeps `state_multiple`
#: copies (Shampoo-style preconditioners and momenta).
OPTIMIZERS: dict[str, tuple[float, float]] = {
    "sgd": (0.0, 2.0), "momentum": (1.0, 4.0), "adam": (2.0, 12.0), "adamw": (2.0, 13.0),
    "adafactor": (0.0, 14.0), "second_order": (0.0, 24.0),
}


class Model(Spec):
    family: Literal["gpt", "bert", "llama"]
    layers: Count
    hidden: Count
    heads: Count
    kv_heads: Count | None = Field(default=None, description="grouped-query attention; default = heads")
    ffn: Count
    vocab: Count
    max_positions: Count
    activation: Literal["gelu", "relu", "silu"]
    norm: Literal["layernorm", "rmsnorm"]
    tied_embeddings: bool | None = Field(
        default=None, description="the LM head reads the token embedding table (no weight of its own); default: "
        "the family's (GPT-2 ties, Llama-2 does not; Llama-3.2 1B/3B do: `tie_word_embeddings`)")

    @model_validator(mode="after")
    def _shapes(self) -> Model:
        if self.hidden % self.heads:
            raise KeyedError("heads", f"heads ({self.heads}) must divide hidden ({self.hidden})")
        if self.heads % self.n_kv_heads:
            raise KeyedError("kv_heads", f"kv_heads ({self.n_kv_heads}) must divide heads ({self.heads})")
        if self.family == "bert" and self.tied_embeddings is False:
            raise KeyedError("tied_embeddings", "BERT's masked-LM head reads the word embeddings (it has no "
                             "weight of its own to untie)")
        return self

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def tied(self) -> bool:
        """Whether the LM head is the token embedding table."""
        return self.family == "gpt" if self.tied_embeddings is None else self.tied_embeddings

    @property
    def gated_ffn(self) -> bool:
        """Llama's SwiGLU FFN has a gate projection beside the up projection."""
        return self.family == "llama"

    @property
    def has_bias(self) -> bool:
        return self.family != "llama"


class Precision(Spec):
    weights: Dtype
    activations: Dtype
    kv_cache: Dtype
    group_size: Count | None = Field(
        default=None, description="integer weights quantized in groups of this many, each group with a scale and "
        "a zero point in the activation dtype (e.g. 32 or 128 for int4). Absent: per-channel scales (negligible)")

    @model_validator(mode="after")
    def _groups_need_integer_weights(self) -> Precision:
        if self.group_size is not None and not self.weights.startswith("int"):
            raise KeyedError("group_size", f"quantization groups need integer weights, not {self.weights}")
        return self

    def weight_bytes(self) -> float:
        """Bytes per weight, with the group's scale and zero point spread over its weights."""
        meta = 2 * DTYPE_BYTES[self.activations] / self.group_size if self.group_size else 0.0
        return DTYPE_BYTES[self.weights] + meta


class TrainingPrecision(Spec):
    gradients: Dtype | None = Field(default=None, description="gradient dtype; default: the activations'")
    optimizer_state: Dtype = Field(default="fp32", description="dtype of the optimizer's state")


class Training(Spec):
    """One optimizer step: forward, backward (with recomputation) and the update."""

    optimizer: Literal["sgd", "momentum", "adam", "adamw", "adafactor", "second_order"] = "adamw"
    state_multiple: float = Field(default=4.0, gt=0, description="second_order: optimizer state per parameter, in "
                                  "multiples of the parameter count (Shampoo-style: 3-4)")
    master_weights: bool | None = Field(default=None, description="an fp32 copy of the weights in the optimizer "
                                        "state (mixed precision); the update writes it and the compute weights. "
                                        "Default: where the weights are narrower than fp32")
    precision: TrainingPrecision = Field(default_factory=TrainingPrecision)
    zero: int = Field(default=0, ge=0, le=3, strict=True, description="ZeRO stage over the data-parallel replicas: "
                      "1 shards the optimizer state, 2 the gradients too, 3 (FSDP) the weights too")
    bucket: Bytes = Field(default=25 * 2 ** 20, description="data parallel: gradients are all-reduced in buckets "
                          "of at least this many bytes as backward produces them (PyTorch DDP's default: 25 MiB)")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout probability on attention's probabilities "
                           "(unfused attention; FlashAttention drops inside its kernel) and on each block's output "
                           "before the residual add, as BERT's and Megatron's GPT train (0.1); 0: none (Llama, "
                           "nanoGPT / llm.c, MPT)")
    recompute: Literal["none", "selective", "full"] = Field(
        default="none", description="activations kept for backward: all (none); all but attention's softmax "
        "region, recomputed in backward (selective, Megatron); each layer's input only, the rest recomputed "
        "(full)")

    @model_validator(mode="after")
    def _meaningful(self) -> Training:
        if "state_multiple" in self.model_fields_set and self.optimizer != "second_order":
            raise KeyedError("state_multiple", f"state_multiple sizes the second_order optimizer's state; "
                             f"{self.optimizer!r} has its own")
        return self

    def state_elements(self) -> float:
        """Optimizer state elements per parameter (master weights apart)."""
        return self.state_multiple if self.optimizer == "second_order" else OPTIMIZERS[self.optimizer][0]


class Scenario(Spec):
    phase: Literal["encode", "prefill", "decode", "generate", "train"]
    batch: Count
    prompt_tokens: Count = Field(description="sequence length (encode) or prompt length")
    new_tokens: int = Field(default=0, ge=0, strict=True, description="decode steps")
    precision: Precision
    attention: Literal["unfused", "fused"] = Field(
        default="unfused", description="unfused: scores QKᵀ, softmax and ×V are three ops and the score matrix is "
        "stored; fused: one FlashAttention-style op that keeps the scores on chip (K and V are re-read per "
        "query tile as the tiling decides)")

    offload_prefetch: bool = Field(
        default=False, description="weights that live in host memory are copied to the device a layer ahead "
        "on a copy stream (overlapping the layer before) into a staging buffer of two layers' weights, and "
        "read from there; without it each op streams its weights from host memory itself")

    @model_validator(mode="after")
    def _steps(self) -> Scenario:
        if self.phase in ("decode", "generate") and self.new_tokens < 1:
            raise KeyedError("new_tokens", f"phase {self.phase!r} needs new_tokens >= 1")
        if self.phase in ("encode", "prefill", "train") and self.new_tokens:
            raise KeyedError(
                "new_tokens", f"phase {self.phase!r} generates no tokens; set new_tokens to 0 (--set "
                "scenario.new_tokens=0), remove it, or use 'generate'"
            )
        return self


class Parallelism(Spec):
    """Megatron-style tensor parallelism inside a stage, pipeline stages over layers, data-parallel
    replicas (independent in inference), and the micro-batches a pipeline is fed."""

    tensor: Count = 1
    pipeline: Count = 1
    data: Count = 1
    microbatches: Count = Field(default=1, description="each replica's batch is split into this many micro-batches "
                                "that flow through the pipeline one after another")
    schedule: Literal["gpipe", "1f1b"] = Field(default="1f1b", description="the order a stage runs its "
                                               "micro-batches' passes in (forward-only inference: both in order)")

    @property
    def devices(self) -> int:
        return self.tensor * self.pipeline * self.data


#: ops of one layer's pass, about (a bound on work, not a count), and the most ops a run may simulate:
#: a GPT-3 175B step on 1,024 GPUs is ~4e5, a 70B model generating 2,000 tokens ~3e6
OPS_PER_LAYER = 20
MAX_OPS = 1e8  # ~12 minutes at the ~7 us an estimated op costs


class Workload(Spec):
    name: str = Field(min_length=1)
    hardware: str = Field(min_length=1, description="default hardware YAML, relative to this file")
    runtime: str | None = Field(default=None, min_length=1, description="default runtime YAML (runtimes/), relative to "
                                "this file; none: the hardware file's own software figures")
    model: Model
    scenario: Scenario
    parallelism: Parallelism = Field(default_factory=Parallelism)
    training: Training | None = Field(default=None, description="with scenario.phase: train (defaults if absent)")

    @property
    def train(self) -> Training:
        return self.training or Training()

    @model_validator(mode="after")
    def _fits_model(self) -> Workload:
        phases = FAMILY_PHASES[self.model.family]
        if self.scenario.phase not in phases:
            raise KeyedError(
                "scenario.phase",
                f"a {self.model.family} model cannot run phase {self.scenario.phase!r} (use {', '.join(phases)})"
            )
        if self.training is not None and self.scenario.phase != "train":
            raise KeyedError("training", f"training settings need scenario.phase: train (not {self.scenario.phase!r})")
        par, m = self.parallelism, self.model
        tr = self.training
        if tr is not None and tr.master_weights and DTYPE_BYTES[self.scenario.precision.weights] >= 4:
            raise KeyedError("training.master_weights", "the weights are fp32 already: an fp32 master copy would "
                             "only add 4 bytes per parameter")
        if self.training is not None and self.training.zero and par.data == 1:
            raise KeyedError("training.zero", "ZeRO shards over data-parallel replicas: set parallelism.data > 1")
        if m.heads % par.tensor or m.ffn % par.tensor:
            raise KeyedError("parallelism.tensor",
                             f"tensor ({par.tensor}) must divide heads ({m.heads}) and ffn ({m.ffn})")
        if m.n_kv_heads % par.tensor and par.tensor % m.n_kv_heads:
            raise KeyedError("parallelism.tensor",
                             f"tensor ({par.tensor}) and kv_heads ({m.n_kv_heads}) must divide one another")
        if par.pipeline > m.layers:
            raise KeyedError("parallelism.pipeline", f"pipeline ({par.pipeline}) exceeds layers ({m.layers})")
        if self.scenario.batch % par.data:
            raise KeyedError("parallelism.data",
                             f"data ({par.data}) must divide scenario.batch ({self.scenario.batch})")
        factors = {"model.layers": m.layers, "scenario.new_tokens": 1 + self.scenario.new_tokens,
                   "parallelism.microbatches": par.microbatches * (3 if self.scenario.phase == "train" else 1),
                   "parallelism.data": par.data}  # replicas: alike ones share a program, but not always
        ops = OPS_PER_LAYER * math.prod(factors.values())
        if ops > MAX_OPS:
            raise KeyedError(max(factors, key=factors.get), f"about {ops:.1e} ops to simulate (layers x passes x "
                             f"micro-batches x replicas): beyond reason (at most {MAX_OPS:.0e})")
        if self.scenario.batch % (par.data * par.microbatches):
            raise KeyedError("parallelism.microbatches",
                             f"data x microbatches ({par.data} x {par.microbatches}) must divide scenario.batch "
                             f"({self.scenario.batch})")
        context = self.scenario.prompt_tokens + self.scenario.new_tokens
        if context > self.model.max_positions:
            raise KeyedError(
                "scenario.prompt_tokens",
                f"prompt_tokens + new_tokens = {context} exceeds model.max_positions ({self.model.max_positions})"
            )
        return self
