"""A Transformer that executes the same operators, with the same shapes, as the graph builder: BERT
encode, GPT/Llama prefill and decode steps with a KV cache (grouped-query attention included), in numpy
or in eager PyTorch (`kernels`: the framework's kernels module, `kernels.kernels_of`).

Weights are random (timing does not depend on their values). fp32 throughout.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from sim.config.workload import Model
from sim.validate import kernels as numpy_kernels


class Reference:
    def __init__(self, model: Model, batch: int, max_context: int, seed: int = 0,
                 kernels: ModuleType = numpy_kernels):
        self.m, self.batch, self.max_context, self.k = model, batch, max_context, kernels
        rng = np.random.default_rng(seed)
        h, d, heads, kvh = model.hidden, model.head_dim, model.heads, model.n_kv_heads
        a = kernels.own

        def w(*shape):
            return a((rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32))

        def ones(n):
            return a(np.ones(n, np.float32))

        def zeros(*shape):
            return a(np.zeros(shape, np.float32))

        bias = model.has_bias
        self.wte = w(model.vocab, h)
        self.wpe = w(model.max_positions, h) if model.family != "llama" else None
        self.wtt = w(2, h) if model.family == "bert" else None
        self.emb_ln = (ones(h), zeros(h)) if model.family == "bert" else None
        self.layers = []
        for _ in range(model.layers):
            layer = {
                "ln1": (ones(h), zeros(h)),
                "wqkv": w(h, (heads + 2 * kvh) * d), "bqkv": w((heads + 2 * kvh) * d) if bias else None,
                "wo": w(heads * d, h), "bo": w(h) if bias else None,
                "ln2": (ones(h), zeros(h)),
                "w_up": w(h, model.ffn), "b_up": w(model.ffn) if bias else None,
                "w_gate": w(h, model.ffn) if model.gated_ffn else None,
                "w_down": w(model.ffn, h), "b_down": w(h) if bias else None,
            }
            self.layers.append(layer)
        self.ln_f = (ones(h), zeros(h))
        self.lm_head = w(h, model.vocab) if model.family == "llama" else None
        self.pooler = (w(h, h), w(h)) if model.family == "bert" else None
        self.k_cache = [zeros(batch, kvh, max_context, d) for _ in range(model.layers)]
        self.v_cache = [zeros(batch, kvh, max_context, d) for _ in range(model.layers)]
        inv = 1.0 / (10000 ** (np.arange(0, d, 2, dtype=np.float32) / d))
        angles = np.outer(np.arange(max_context, dtype=np.float32), inv)
        self.cos, self.sin = a(np.cos(angles).astype(np.float32)), a(np.sin(angles).astype(np.float32))

    def _norm(self, x, params):
        k = self.k
        return k.layernorm(x, *params) if self.m.norm == "layernorm" else k.rmsnorm(x, params[0])

    def forward(self, tokens: np.ndarray, past: int) -> np.ndarray:
        """Run `tokens` [batch, T] (a numpy int array) with `past` tokens already in the KV cache; return
        the head's output."""
        m, k = self.m, self.k
        b, t = tokens.shape
        x = self.wte[k.array(tokens)]
        if self.wpe is not None:
            x = x + self.wpe[past:past + t]
        if self.wtt is not None:
            x = x + self.wtt[0]
        if self.emb_ln is not None:
            x = k.layernorm(x, *self.emb_ln)
        pre = m.family != "bert"
        for i, layer in enumerate(self.layers):
            x = self._layer(x, layer, i, past)
        if m.family == "bert":
            wp, bp = self.pooler
            return k.tanh(k.linear(x[:, 0], wp, bp))
        x = self._norm(x, self.ln_f) if pre else x
        head = self.wte.T if self.lm_head is None else self.lm_head
        return k.linear(x[:, -1], head)

    def _layer(self, x, p, i, past):
        m, k = self.m, self.k
        b, t, h = x.shape
        d, heads, kvh = m.head_dim, m.heads, m.n_kv_heads
        pre = m.family != "bert"
        ctx = past + t
        a_in = self._norm(x, p["ln1"]) if pre else x
        qkv = k.linear(a_in, p["wqkv"], p["bqkv"])
        q = k.permute(qkv[..., : heads * d].reshape(b, t, heads, d), (0, 2, 1, 3))
        kk = k.permute(qkv[..., heads * d: (heads + kvh) * d].reshape(b, t, kvh, d), (0, 2, 1, 3))
        v = k.permute(qkv[..., (heads + kvh) * d:].reshape(b, t, kvh, d), (0, 2, 1, 3))
        if m.family == "llama":
            cos, sin = self.cos[past:ctx], self.sin[past:ctx]
            q, kk = k.rope(q, cos, sin), k.rope(kk, cos, sin)
        self.k_cache[i][:, :, past:ctx] = kk
        self.v_cache[i][:, :, past:ctx] = v
        keys, values = self.k_cache[i][:, :, :ctx], self.v_cache[i][:, :, :ctx]
        g = heads // kvh
        qg = q.reshape(b, kvh, g * t, d)  # heads sharing a KV head attend together
        scores = qg @ k.permute(keys, (0, 1, 3, 2))
        probs = k.softmax(scores, 1.0 / np.sqrt(d))
        attn = k.permute((probs @ values).reshape(b, heads, t, d), (0, 2, 1, 3)).reshape(b, t, heads * d)
        x = k.add(x, k.linear(attn, p["wo"], p["bo"]))
        if not pre:
            x = k.layernorm(x, *p["ln1"])
        f_in = self._norm(x, p["ln2"]) if pre else x
        up = k.linear(f_in, p["w_up"], p["b_up"])
        if m.gated_ffn:
            act = k.silu_gate(up, k.linear(f_in, p["w_gate"]))
        else:
            act = k.gelu(up) if m.activation == "gelu" else k.relu(up)
        x = k.add(x, k.linear(act, p["w_down"], p["b_down"]))
        if not pre:
            x = k.layernorm(x, *p["ln2"])
        return x
