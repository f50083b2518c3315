"""GGUF files (llama.cpp format): metadata to an HF-style config, tensors to HF names, dequantised.

Only the `llama` GGUF architecture is read (it covers the embedded SmolLM2 model and Llama-family
checkpoints). Quantised tensors are dequantised to float32 with the `gguf` package. llama.cpp's
converter permutes the rows of `attn_q` / `attn_k` from the HF rotate-half layout into interleaved
pairs; `unpermute_rotary` undoes it so the tensors match Hugging Face's `q_proj` / `k_proj`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from jaxedit.io.cache import cache_root
from jaxedit.io.checkpoints import TensorSource, WeightsError

SUPPORTED_GGUF_ARCHITECTURES: tuple[str, ...] = ("llama",)

_LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "ffn_norm": "post_attention_layernorm.weight",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: per head, rows `(pair, 2)` back to `(2, half)`."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader: object, key: str, default: object = None) -> object:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _open(path: Path):
    import gguf

    if not path.exists():
        raise WeightsError(f"GGUF file {path} does not exist")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:
        raise WeightsError(f"cannot read GGUF file {path} (truncated or not GGUF): {err}") from err


def read_gguf(path: Path) -> tuple[dict, TensorSource]:
    """HF-style `config.json` dict and HF-named tensors of a GGUF file."""
    import gguf

    reader = _open(path)
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise WeightsError(
            f"{path.name}: GGUF architecture {arch!r} is not supported; jaxedit reads GGUF files of "
            "architecture " + ", ".join(SUPPORTED_GGUF_ARCHITECTURES)
        )
    n_heads = int(_field(reader, f"{arch}.attention.head_count"))
    n_kv = int(_field(reader, f"{arch}.attention.head_count_kv", n_heads))
    d = int(_field(reader, f"{arch}.embedding_length"))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = _field(reader, f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else None)
    names = {t.name for t in reader.tensors}
    hf = {
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": d,
        "num_hidden_layers": int(_field(reader, f"{arch}.block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": int(_field(reader, f"{arch}.attention.key_length", d // n_heads)),
        "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length")),
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length")),
        "rms_norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }
    scaling_type = _field(reader, f"{arch}.rope.scaling.type")
    if scaling_type not in (None, "none"):
        if scaling_type != "linear":
            raise WeightsError(f"{path.name}: GGUF rope scaling {scaling_type!r} is not supported")
        hf["rope_scaling"] = {
            "rope_type": "linear",
            "factor": float(_field(reader, f"{arch}.rope.scaling.factor")),
        }

    tensors = {t.name: t for t in reader.tensors}

    def reader_for(tensor: object, heads: int | None):
        def read() -> np.ndarray:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            shape = tuple(int(s) for s in reversed(tensor.shape))
            values = values.reshape(shape)
            return unpermute_rotary(values, heads) if heads else values

        return read

    readers = {}
    for name, tensor in tensors.items():
        if name in _GLOBAL_NAMES:
            readers[_GLOBAL_NAMES[name]] = reader_for(tensor, None)
            continue
        match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
        if match is None or match.group(2) not in _LAYER_NAMES:
            raise WeightsError(f"{path.name}: unexpected GGUF tensor {name!r}")
        layer, kind, part = match.groups()
        hf_name = _LAYER_NAMES[kind]
        hf_name = hf_name if hf_name.endswith(".weight") else f"{hf_name}.{part}"
        heads = {"attn_q": n_heads, "attn_k": n_kv}.get(kind)
        readers[f"model.layers.{layer}.{hf_name}"] = reader_for(tensor, heads)
    hf["has_tokenizer"] = "tokenizer.ggml.model" in reader.fields
    return hf, TensorSource(readers, str(path))


def gguf_tokenizer(path: Path):
    """The Hugging Face tokenizer stored in a GGUF file.

    transformers builds it from the GGUF metadata (seconds for a 49k vocabulary); the result is cached
    as `tokenizer.json` under `$JAXEDIT_CACHE` (default `~/.cache/jaxedit`), keyed by the file's path,
    size and modification time, and reused on later loads.
    """
    from transformers import AutoTokenizer

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_root() / "tokenizers" / key
    if (cached / "tokenizer.json").exists():
        try:
            return AutoTokenizer.from_pretrained(str(cached))
        except Exception:  # an unreadable cache entry is rebuilt below
            shutil.rmtree(cached, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cached.parent))
        tokenizer.save_pretrained(str(staging))
        os.replace(staging, cached)
    except OSError:  # a read-only home only costs the cache
        shutil.rmtree(locals().get("staging", cached.parent / ".none"), ignore_errors=True)
    return tokenizer
