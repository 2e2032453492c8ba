"""Realistic small Hub repositories for the tests: a sharded safetensors model written with the
real ``safetensors`` package (numpy backend), its index, config and tokenizer files, nested
folders, and big random LFS files; plus where each tensor lives (shard and byte range).

A safetensors file is: 8 bytes little-endian header length N, N bytes of JSON header (padded
with spaces), then the data; each tensor's ``data_offsets`` [begin, end) are relative to the end
of the header, so its bytes in the file are ``[8 + N + begin, 8 + N + end)``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save

INDEX = "model.safetensors.index.json"
MIB = 1024 * 1024

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}

GITATTRIBUTES = b"""*.bin filter=lfs diff=lfs merge=lfs -text
*.gguf filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
"""


@dataclass(frozen=True)
class TensorLocation:
    """Where one tensor's bytes are: ``shard`` (a path in the repo), ``[start, end)`` in it."""

    name: str
    shard: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    def decode(self, data: bytes) -> np.ndarray:
        """The tensor from exactly its ``end - start`` bytes (e.g. a ranged read)."""
        assert len(data) == self.end - self.start, (len(data), self.end - self.start)
        return np.frombuffer(data, dtype=DTYPES[self.dtype]).reshape(self.shape)


def safetensors_header(data: bytes) -> tuple[int, dict[str, object]]:
    """(header length N, parsed JSON header) of a safetensors file, from its first 8 + N bytes."""
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8 : 8 + length])


def shard_locations(shard: str, data: bytes) -> dict[str, TensorLocation]:
    """Every tensor of one safetensors file (``data`` needs only its header)."""
    length, header = safetensors_header(data)
    locations = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert isinstance(info, dict)
        begin, end = info["data_offsets"]
        locations[name] = TensorLocation(
            name, shard, info["dtype"], tuple(info["shape"]), 8 + length + begin, 8 + length + end
        )
    return locations


def tensor_locations(files: Mapping[str, bytes]) -> dict[str, TensorLocation]:
    """Every tensor of a repo: the shards named by ``model.safetensors.index.json`` if there is
    one (checking its weight_map against the shard headers), else every ``*.safetensors``."""
    if INDEX in files:
        weight_map: dict[str, str] = json.loads(files[INDEX])["weight_map"]
        shards = sorted(set(weight_map.values()))
    else:
        weight_map = {}
        shards = sorted(path for path in files if path.endswith(".safetensors"))
    locations: dict[str, TensorLocation] = {}
    for shard in shards:
        locations.update(shard_locations(shard, files[shard]))
    if weight_map:
        found = {name: location.shard for name, location in locations.items()}
        assert found == weight_map, "index weight_map disagrees with the shard headers"
    return locations


def model_tensors(
    *, layers: int = 2, hidden: int = 32, vocab: int = 128, seed: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic weights of a tiny BERT-like model, several dtypes."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, dtype: type = np.float32) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype)

    tensors = {
        "embeddings.word_embeddings.weight": normal(vocab, hidden),
        "embeddings.position_embeddings.weight": normal(64, hidden, dtype=np.float16),
        "embeddings.position_ids": np.arange(64, dtype=np.int64).reshape(1, 64),
        "embeddings.LayerNorm.weight": np.ones(hidden, dtype=np.float32),
        "embeddings.LayerNorm.bias": np.zeros(hidden, dtype=np.float32),
    }
    for layer in range(layers):
        prefix = f"encoder.layer.{layer}"
        for part in ("query", "key", "value"):
            tensors[f"{prefix}.attention.self.{part}.weight"] = normal(hidden, hidden)
            tensors[f"{prefix}.attention.self.{part}.bias"] = normal(hidden)
        tensors[f"{prefix}.intermediate.dense.weight"] = normal(
            4 * hidden, hidden, dtype=np.float16
        )
        tensors[f"{prefix}.output.dense.weight"] = normal(hidden, 4 * hidden, dtype=np.float16)
    tensors["pooler.dense.weight"] = normal(hidden, hidden)
    return tensors


def sharded_safetensors(
    tensors: Mapping[str, np.ndarray], shards: int, *, prefix: str = "model"
) -> dict[str, bytes]:
    """``{prefix}-0000i-of-0000n.safetensors`` files (tensors split in name order, about equal
    sizes) and ``{prefix}.safetensors.index.json`` with ``total_size`` and ``weight_map``."""
    names = sorted(tensors)
    total = sum(tensors[name].nbytes for name in names)
    groups: list[list[str]] = [[] for _ in range(shards)]
    seen = 0
    for name in names:
        groups[min(shards - 1, seen * shards // max(total, 1))].append(name)
        seen += tensors[name].nbytes
    files: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    for number, group in enumerate(groups, 1):
        shard = f"{prefix}-{number:05d}-of-{shards:05d}.safetensors"
        files[shard] = save({name: tensors[name] for name in group}, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, shard))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    files[f"{prefix}.safetensors.index.json"] = json.dumps(index, indent=2).encode() + b"\n"
    return files


def _json(value: object) -> bytes:
    return json.dumps(value, indent=2).encode() + b"\n"


def tokenizer_files(vocab: int = 128) -> dict[str, bytes]:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"tok{i}" for i in range(vocab - len(tokens))]
    special = [
        {
            "id": i,
            "content": token,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, token in enumerate(tokens[:5])
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "WordLevel",
            "vocab": {token: i for i, token in enumerate(tokens)},
            "unk_token": "[UNK]",
        },
    }
    return {
        "tokenizer.json": _json(tokenizer),
        "tokenizer_config.json": _json(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": 64,
                "do_lower_case": True,
                "unk_token": "[UNK]",
                "pad_token": "[PAD]",
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "mask_token": "[MASK]",
            }
        ),
        "special_tokens_map.json": _json(
            {
                "unk_token": "[UNK]",
                "pad_token": "[PAD]",
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "mask_token": "[MASK]",
            }
        ),
        "vocab.txt": "\n".join(tokens).encode() + b"\n",
    }


def model_repo(
    *, shards: int = 2, layers: int = 2, hidden: int = 32, vocab: int = 128, seed: int = 0
) -> dict[str, bytes]:
    """A sentence-transformers-like model repo, ready for ``HubServer.create_repo``:
    ``.gitattributes``, ``README.md``, ``config.json``, tokenizer files, ``shards`` safetensors
    shards with their index, ``modules.json``, ``1_Pooling/config.json``, ``onnx/model.onnx``
    (random bytes standing for an export) and ``onnx/config.json``."""
    tensors = model_tensors(layers=layers, hidden=hidden, vocab=vocab, seed=seed)
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "intermediate_size": 4 * hidden,
        "vocab_size": vocab,
        "max_position_embeddings": 64,
        "torch_dtype": "float32",
    }
    rng = np.random.default_rng(seed + 1)
    files = {
        ".gitattributes": GITATTRIBUTES,
        "README.md": b"---\nlibrary_name: sentence-transformers\n---\n# tiny test model\n",
        "config.json": _json(config),
        "modules.json": _json(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
        ),
        "1_Pooling/config.json": _json(
            {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True}
        ),
        "onnx/model.onnx": rng.bytes(12 * 1024),
        "onnx/config.json": _json({"opset": 17}),
        **tokenizer_files(vocab),
        **sharded_safetensors(tensors, shards),
    }
    return dict(sorted(files.items()))


def _random_chunks(mib: int, seed: int) -> Iterator[bytes]:
    generator = np.random.PCG64(seed)
    for _ in range(mib):
        yield generator.random_raw(MIB // 8).tobytes()


def big_file(mib: int, seed: int = 0) -> bytes:
    """``mib`` MiB of deterministic random bytes (about 0.1 s for 64 MiB; twice the size in
    memory while built: for a GiB, prefer ``write_big_file``)."""
    return b"".join(_random_chunks(mib, seed))


def write_big_file(path: Path, mib: int, seed: int = 0) -> Path:
    """The same bytes as ``big_file(mib, seed)``, written to ``path`` a MiB at a time; give the
    Path to ``HubServer.create_repo`` and it is served from disk."""
    with path.open("wb") as stream:
        for chunk in _random_chunks(mib, seed):
            stream.write(chunk)
    return path


def with_big_file(
    files: Mapping[str, bytes], mib: int, *, path: str = "weights/big.bin", seed: int = 0
) -> dict[str, bytes]:
    """``files`` plus one big random LFS file of ``mib`` MiB at ``path``."""
    return {**files, path: big_file(mib, seed)}
