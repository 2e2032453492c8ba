"""Sentence embeddings with a BERT model directory, in numpy: enough to use a real model (the
sentence-transformers all-MiniLM-L6-v2 checkpoint) through a mount without installing torch.

The forward pass is the standard BERT encoder (post-layer-norm, exact GELU); pooling is the mean
over the tokens, then L2 normalisation, as that model's ``1_Pooling/config.json`` asks.

Run as ``python -m tests.helpers.sentence_embedding MODEL_DIR SENTENCE...``: prints a JSON list
of embeddings, one per sentence. It runs in its own process in the tests because loading the
weights reads the mounted file, and the Hub stand-in serves it from the test process.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

Array = Any

_ERF = np.frompyfunc(math.erf, 1, 1)


def _gelu(x: Array) -> Array:
    return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)).astype(np.float32))


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _linear(x: Array, weights: dict[str, Array], name: str) -> Array:
    return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]


def _softmax(x: Array) -> Array:
    shifted = np.exp(x - x.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def encode(model_dir: Path, sentences: list[str]) -> list[list[float]]:
    """One normalised embedding per sentence."""
    from tokenizers import Tokenizer

    config = json.loads((model_dir / "config.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128: one sentence at a time needs no padding
    heads, eps = config["num_attention_heads"], config["layer_norm_eps"]
    embeddings = []
    for sentence in sentences:
        encoding = tokenizer.encode(sentence)
        ids = np.array(encoding.ids)
        types = np.array(encoding.type_ids)
        x = (
            weights["embeddings.word_embeddings.weight"][ids]
            + weights["embeddings.position_embeddings.weight"][np.arange(len(ids))]
            + weights["embeddings.token_type_embeddings.weight"][types]
        )
        x = _layer_norm(
            x, weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"], eps
        )
        for layer in range(config["num_hidden_layers"]):
            prefix = f"encoder.layer.{layer}"
            x = _encoder_layer(x, weights, prefix, heads, eps)
        pooled = x.mean(0)
        embeddings.append((pooled / np.linalg.norm(pooled)).astype(float).tolist())
    return embeddings


def _encoder_layer(
    x: Array, weights: dict[str, Array], prefix: str, heads: int, eps: float
) -> Array:
    tokens, hidden = x.shape
    size = hidden // heads

    def split(name: str) -> Array:
        projected = _linear(x, weights, f"{prefix}.attention.self.{name}")
        return projected.reshape(tokens, heads, size).transpose(1, 0, 2)

    query, key, value = split("query"), split("key"), split("value")
    attention = _softmax(query @ key.transpose(0, 2, 1) / math.sqrt(size)) @ value
    attention = attention.transpose(1, 0, 2).reshape(tokens, hidden)
    x = _layer_norm(
        x + _linear(attention, weights, f"{prefix}.attention.output.dense"),
        weights[f"{prefix}.attention.output.LayerNorm.weight"],
        weights[f"{prefix}.attention.output.LayerNorm.bias"],
        eps,
    )
    inner = _gelu(_linear(x, weights, f"{prefix}.intermediate.dense"))
    return _layer_norm(
        x + _linear(inner, weights, f"{prefix}.output.dense"),
        weights[f"{prefix}.output.LayerNorm.weight"],
        weights[f"{prefix}.output.LayerNorm.bias"],
        eps,
    )


if __name__ == "__main__":
    print(json.dumps(encode(Path(sys.argv[1]), sys.argv[2:])))
