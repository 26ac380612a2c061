"""An independent PyTorch implementation of the Llama forward, read straight
from a GGUF file with the `gguf` package. Used as the golden reference for
libmop's C forward; shares no code with it.

RoPE: llama.cpp's converter permutes the rows of Q and K so that each head
rotates adjacent pairs (x[2i], x[2i+1]) by pos * theta^(-2i/n_rot). The
reference implements that directly, and can also un-permute Q/K back to the
Hugging Face layout and apply HF's rotate_half, as a cross-check.
"""
import math

import numpy as np
import torch
import gguf


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


class LlamaReference:
    def __init__(self, path, dtype=torch.float64):
        r = gguf.GGUFReader(path)
        arch = _field(r, "general.architecture")
        assert arch == "llama", arch

        def hp(name, default=None):
            return _field(r, f"{arch}.{name}", default)

        self.n_layer = int(hp("block_count"))
        self.d = int(hp("embedding_length"))
        self.n_ff = int(hp("feed_forward_length"))
        self.n_head = int(hp("attention.head_count"))
        self.n_head_kv = int(hp("attention.head_count_kv", self.n_head))
        self.head_dim = self.d // self.n_head
        self.n_rot = int(hp("rope.dimension_count", self.head_dim))
        self.theta = float(hp("rope.freq_base", 10000.0))
        self.eps = float(hp("attention.layer_norm_rms_epsilon"))
        self.dtype = dtype

        tensors = {}
        for t in r.tensors:
            a = gguf.quants.dequantize(t.data, t.tensor_type)
            shape = tuple(int(s) for s in reversed(list(t.shape)))  # ne[] is innermost-first
            tensors[t.name] = torch.from_numpy(np.array(a, dtype=np.float32).reshape(shape)).to(dtype)
        self.w = tensors
        self.n_vocab = tensors["token_embd.weight"].shape[0]
        self.lm_head = tensors.get("output.weight", tensors["token_embd.weight"])

    # ---- pieces -------------------------------------------------------------
    def rmsnorm(self, x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + self.eps) * w

    def inv_freq(self):
        i = torch.arange(0, self.n_rot // 2, dtype=torch.float64)
        return (self.theta ** (-2.0 * i / self.n_rot)).to(self.dtype)

    def rope_interleaved(self, x, pos):
        """x (T, H, hd): rotate pairs (x[2i], x[2i+1]) by pos * freq[i]."""
        ang = pos.to(self.dtype)[:, None] * self.inv_freq()[None, :]  # (T, n_rot/2)
        c, s = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
        xr = x[..., : self.n_rot]
        x0, x1 = xr[..., 0::2], xr[..., 1::2]
        y = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2)
        return torch.cat([y, x[..., self.n_rot:]], dim=-1)

    def unpermute(self, w, n_head):
        """GGUF Q/K rows -> Hugging Face rows (inverse of the converter's permute)."""
        rows, cols = w.shape
        return (w.reshape(n_head, self.head_dim // 2, 2, cols).transpose(1, 2)
                .reshape(rows, cols))

    def rope_hf(self, x, pos):
        """HF rotate_half on (T, H, hd) in HF layout."""
        ang = pos.to(self.dtype)[:, None] * self.inv_freq()[None, :]
        emb = torch.cat([ang, ang], dim=-1)
        c, s = torch.cos(emb)[:, None, :], torch.sin(emb)[:, None, :]
        half = self.head_dim // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * c + rot * s

    def attention(self, q, k, v):
        """q (T, H, hd), k/v (T, Hkv, hd): causal GQA."""
        T = q.shape[0]
        group = self.n_head // self.n_head_kv
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(self.head_dim)
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        scores = scores.masked_fill(mask, float("-inf"))
        p = torch.softmax(scores, dim=-1)
        return torch.einsum("hts,shd->thd", p, v).reshape(T, -1)

    # ---- whole model ------------------------------------------------------------
    @torch.no_grad()
    def forward(self, tokens, rope="interleaved"):
        """logits (T, n_vocab) for token ids at positions 0..T-1."""
        w = self.w
        tok = torch.as_tensor(tokens, dtype=torch.long)
        T = tok.shape[0]
        pos = torch.arange(T)
        x = w["token_embd.weight"][tok]
        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = self.rmsnorm(x, w[p + "attn_norm.weight"])
            wq, wk = w[p + "attn_q.weight"], w[p + "attn_k.weight"]
            if rope == "hf":
                wq, wk = self.unpermute(wq, self.n_head), self.unpermute(wk, self.n_head_kv)
            q = (h @ wq.T).reshape(T, self.n_head, self.head_dim)
            k = (h @ wk.T).reshape(T, self.n_head_kv, self.head_dim)
            v = (h @ w[p + "attn_v.weight"].T).reshape(T, self.n_head_kv, self.head_dim)
            if rope == "hf":
                q, k = self.rope_hf(q, pos), self.rope_hf(k, pos)
            else:
                q, k = self.rope_interleaved(q, pos), self.rope_interleaved(k, pos)
            x = x + self.attention(q, k, v) @ w[p + "attn_output.weight"].T
            h = self.rmsnorm(x, w[p + "ffn_norm.weight"])
            g = h @ w[p + "ffn_gate.weight"].T
            u = h @ w[p + "ffn_up.weight"].T
            x = x + (torch.nn.functional.silu(g) * u) @ w[p + "ffn_down.weight"].T
        return self.rmsnorm(x, w["output_norm.weight"]) @ self.lm_head.T

    def nll(self, tokens):
        """Per-token -log p(tokens[i+1] | tokens[:i+1]), float64, (T-1,)."""
        logits = self.forward(tokens).to(torch.float64)
        lp = torch.log_softmax(logits[:-1], dim=-1)
        tgt = torch.as_tensor(tokens[1:], dtype=torch.long)
        return -lp.gather(1, tgt[:, None])[:, 0]
