"""Build our `model:` keys from a Hugging Face `config.json` (architecture only, no weights)."""

from __future__ import annotations

from typing import Any

from sim.config.units import short
from sim.errors import ConfigError

# our key -> candidate HF keys, first present wins
_KEYS = {
    "layers": ("num_hidden_layers", "n_layer"),
    "hidden": ("hidden_size", "n_embd"),
    "heads": ("num_attention_heads", "n_head"),
    "kv_heads": ("num_key_value_heads",),
    "ffn": ("intermediate_size", "n_inner"),
    "vocab": ("vocab_size",),
    "max_positions": ("max_position_embeddings", "n_positions"),
}
_FAMILY = {"gpt2": "gpt", "bert": "bert", "llama": "llama"}
_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu", "silu": "silu"}


def model_from_hf_config(hf: dict[str, Any], file: str) -> dict[str, Any]:
    """Errors name the config.json and its own key (`num_hidden_layers`), not the workload's."""
    model_type = hf.get("model_type")
    if not isinstance(model_type, str) or model_type not in _FAMILY:
        supported = ", ".join(_FAMILY)
        raise ConfigError(f"unsupported model_type {short(model_type)} (supported: {supported})", file, "model_type")
    family = _FAMILY[model_type]
    out: dict[str, Any] = {"family": family}
    for key, candidates in _KEYS.items():
        found = next((c for c in candidates if hf.get(c) is not None), None)
        if found is not None:
            value = hf[found]
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 10**9:
                raise ConfigError(f"expected a whole number from 1 to 1e9, got {short(value)}", file, found)
            out[key] = value
    if "ffn" not in out and "hidden" in out:
        out["ffn"] = 4 * out["hidden"]  # GPT-2 convention: n_inner null means 4 * n_embd
    act_key = "hidden_act" if hf.get("hidden_act") is not None else "activation_function"
    act = hf.get(act_key)
    if not isinstance(act, str) or act not in _ACTIVATION:
        raise ConfigError(f"unsupported activation {short(act)} (supported: {', '.join(_ACTIVATION)})", file, act_key)
    out["activation"] = _ACTIVATION[act]
    out["norm"] = "rmsnorm" if family == "llama" else "layernorm"
    tie = hf.get("tie_word_embeddings")
    if tie is not None and family != "bert":  # (BERT's masked-LM head ties whatever it says)
        if not isinstance(tie, bool):
            raise ConfigError(f"expected true or false, got {short(tie)}", file, "tie_word_embeddings")
        out["tied_embeddings"] = tie
    # what memwall does not model is refused, not read past: a different graph would be simulated
    for key in _EXPERTS:
        if isinstance(hf.get(key), int) and hf[key] > 1:
            raise ConfigError(f"a mixture of experts ({hf[key]}) is not modelled", file, key)
    head_dim = hf.get("head_dim")
    if head_dim is not None and out.get("hidden") and out.get("heads") and head_dim * out["heads"] != out["hidden"]:
        raise ConfigError(f"{short(head_dim)} x {out['heads']} heads is not hidden ({out['hidden']}): memwall's "
                          "heads split the hidden size", file, "head_dim")
    return out


#: keys of a mixture-of-experts config.json (Mixtral, Qwen-MoE, DeepSeek)
_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts")
