"""GGUF files for the llama.cpp engine: LoRA adapters exported from PEFT, and small Gemma 3 models.

- :func:`write_gguf_lora` turns a PEFT LoRA directory (``adapter_config.json`` +
  ``adapter_model.safetensors``) into the GGUF LoRA file llama.cpp loads at run time
  (``llama_adapter_lora_init``). The layout follows llama.cpp's ``convert_lora_to_gguf.py``:
  ``general.type = "adapter"``, ``adapter.type = "lora"``, ``adapter.lora.alpha``, and per target
  weight two tensors ``<gguf name>.lora_a`` (PEFT's ``lora_A``, shape ``r x in``) and
  ``<gguf name>.lora_b`` (``lora_B``, ``out x r``). llama.cpp scales the product by ``alpha / r``,
  as PEFT does; rsLoRA's ``alpha / sqrt(r)`` is written as an equivalent alpha.
- :func:`write_gemma3_gguf` writes a small Hugging Face Gemma 3 checkpoint (the tiny test model) as an
  F32 GGUF, so that the engine's tests run on a model that loads in milliseconds.
- :func:`write_bert_gguf` writes a Hugging Face BERT sentence encoder (the bundled all-MiniLM-L6-v2) as a
  GGUF (F16 matrices) with mean pooling and its WordPiece vocabulary, so that memory embeds on llama.cpp without torch.
- :func:`widen_q5_0` copies a GGUF model with its Q5_0 weights stored as Q8_0: the same numbers, run by
  llama.cpp's faster Q8_0 kernels.

Both use the ``gguf`` package's writer and its Hugging Face → GGUF tensor-name maps, and need neither
torch nor transformers (safetensors are read as numpy arrays).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from procmem.core.errors import ProcmemError

__all__ = ["GGUF_LORA_NAME", "ensure_gguf_lora", "gguf_tensor_name", "widen_q5_0", "write_bert_gguf",
           "write_gemma3_gguf", "write_gguf_lora"]

GGUF_LORA_NAME = "adapter-lora.gguf"
"""The GGUF LoRA file's name inside a PEFT adapter directory."""

_ARCH = "gemma3"
_PEFT_PREFIX = "base_model.model."
_LORA_TENSOR = re.compile(r"^(?P<base>.+)\.lora_(?P<part>[AB])(?:\.default)?\.weight$")
_LAYER = re.compile(r"\.layers\.(\d+)\.")
_LORA_FIX = "use a plain LoRA adapter (procmem distill writes one) on the model's linear projections"


def gguf_tensor_name(hf_name: str, n_layers: int, *, arch: str = _ARCH) -> str | None:
    """The GGUF name of a Hugging Face weight (e.g. ``model.layers.0.self_attn.q_proj.weight`` →
    ``blk.0.attn_q.weight``), from the ``gguf`` package's map; None for a name it does not know."""
    import gguf

    name_map = gguf.get_tensor_name_map(_model_arch(arch), n_layers)
    found = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    return str(found) if found is not None else None


def write_gguf_lora(adapter_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
                    arch: str = _ARCH) -> Path:
    """Write the GGUF LoRA file of the PEFT adapter in ``adapter_dir`` (default: ``<adapter_dir>/adapter-lora.gguf``)
    atomically, and return its path. Anything llama.cpp could not apply exactly is a ProcmemError."""
    import gguf

    adapter_dir = Path(adapter_dir)
    out_path = Path(out) if out is not None else adapter_dir / GGUF_LORA_NAME
    config = _read_adapter_config(adapter_dir)
    pairs = _lora_pairs(adapter_dir)
    n_layers = 1 + max((int(m.group(1)) for base in pairs if (m := _LAYER.search(base))), default=0)
    writer_tensors: list[tuple[str, Any]] = []
    for base, (lora_a, lora_b) in sorted(pairs.items()):
        name = gguf_tensor_name(base + ".weight", n_layers, arch=arch)
        if name is None:
            raise ProcmemError(f"the adapter targets {base}, which has no llama.cpp ({arch}) tensor",
                               where=str(adapter_dir / "adapter_model.safetensors"), fix=_LORA_FIX)
        if lora_a.shape[0] != lora_b.shape[1]:
            raise ProcmemError(f"{base}: lora_A {lora_a.shape} and lora_B {lora_b.shape} disagree on the rank",
                               where=str(adapter_dir), fix=_LORA_FIX)
        writer_tensors += [(f"{name}.lora_a", lora_a), (f"{name}.lora_b", lora_b)]
    rank = int(config["r"])
    alpha = float(config["lora_alpha"])
    if config.get("use_rslora"):
        alpha *= math.sqrt(rank)  # llama.cpp scales by alpha / r; rsLoRA by alpha / sqrt(r)

    def write(path: Path) -> None:
        writer = gguf.GGUFWriter(str(path), arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for name, data in writer_tensors:
            writer.add_tensor(name, data)
        _finish(writer)

    _write_atomically(out_path, write)
    return out_path


def ensure_gguf_lora(adapter_dir: str | os.PathLike[str]) -> Path:
    """The adapter's GGUF LoRA file, written on first use for adapters registered before it existed."""
    path = Path(adapter_dir) / GGUF_LORA_NAME
    return path if path.is_file() else write_gguf_lora(adapter_dir)


def write_gemma3_gguf(hf_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the small Hugging Face Gemma 3 model in ``hf_dir`` (a byte-level BPE tokenizer, like the tiny
    test model's) as an F32 GGUF file at ``out`` (atomically).

    llama.cpp scales queries by ``1/sqrt(head_dim)`` where transformers uses ``query_pre_attn_scalar``;
    the difference is folded into the query norm's weight (exact: RoPE is linear), so both engines compute
    the same function.
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    hf_dir = Path(hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    tokenizer = json.loads((hf_dir / "tokenizer.json").read_text())
    weights = load_file(str(hf_dir / "model.safetensors"))
    n_layers = int(config["num_hidden_layers"])
    head_dim = int(config["head_dim"])
    q_scale = math.sqrt(head_dim / float(config.get("query_pre_attn_scalar", head_dim)))
    rope = config.get("rope_parameters") or {}
    rope_global = float(rope.get("full_attention", {}).get("rope_theta", config.get("rope_theta", 1_000_000.0)))
    rope_local = float(rope.get("sliding_attention", {}).get("rope_theta", config.get("rope_local_base_freq", 1e4)))
    layer_types = config.get("layer_types") or ["full_attention"] * n_layers

    def write(path: Path) -> None:
        writer = _model_writer(path, _ARCH, hf_dir.name, config)
        writer.add_head_count_kv(int(config["num_key_value_heads"]))
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_freq_base(rope_global)
        writer.add_rope_freq_base_swa(rope_local)
        writer.add_sliding_window(int(config["sliding_window"]))
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in layer_types])
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        _add_byte_level_vocab(writer, tokenizer, config)
        for hf_name, data in sorted(weights.items()):
            name = gguf_tensor_name(hf_name, n_layers)
            if name is None:
                raise ProcmemError(f"{hf_name} has no GGUF tensor name", where=str(hf_dir),
                                   fix="only Gemma 3 causal LMs are supported")
            data = data.astype(np.float32)
            if hf_name.endswith("norm.weight"):
                data = data + 1.0  # Gemma3RMSNorm multiplies by (1 + weight); llama.cpp by weight
            if hf_name.endswith("q_norm.weight"):
                data = data * q_scale
            writer.add_tensor(name, data)
        _finish(writer)

    out_path = Path(out)
    _write_atomically(out_path, write)
    return out_path


def widen_q5_0(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the GGUF model ``source`` at ``out`` (atomically) with every Q5_0 tensor stored as Q8_0, the rest as is.

    Exact: a Q5_0 block is an fp16 scale and 32 integers in [-16, 15]; the Q8_0 block keeps the scale and holds the
    integers in int8, so every weight is the same number, and llama.cpp's kernels (which multiply integer blocks
    exactly, then scale) give the same logits. The bundled Gemma 3 270M keeps 63M of its 268M weights as Q5_0
    (the attention's q and k, the feed-forward's gate and up), which llama.cpp's x86 AVX2 kernels multiply ~13%
    slower per weight than Q8_0. The file grows by 32 MB (245 → 277 MB). The metadata is copied byte for byte
    (``gguf.GGUFReader`` would take ~30 s to parse a 262k-token vocabulary); only the tensor table is rewritten.
    """
    import gguf
    import numpy as np

    source_path, out_path = Path(source), Path(out)
    raw = np.memmap(source_path, dtype=np.uint8, mode="r")
    header = _GgufHeader(raw, source_path)
    q5_0, q8_0 = int(gguf.GGMLQuantizationType.Q5_0), int(gguf.GGMLQuantizationType.Q8_0)

    def widen(blocks: Any) -> Any:  # 22-byte Q5_0 blocks -> 34-byte Q8_0 blocks
        blocks = blocks.reshape(-1, 22)
        high = blocks[:, 2:6].copy().view("<u4")  # bit j: the fifth bit of value j
        low = blocks[:, 6:22]  # values j (low nibble) and j + 16 (high nibble)
        fifth = ((high >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4
        values = np.concatenate([low & 0x0F, low >> 4], axis=-1) | fifth
        quants = (values.astype(np.int16) - 16).astype(np.int8).view(np.uint8)
        return np.concatenate([blocks[:, 0:2], quants], axis=-1).reshape(-1)

    def write(path: Path) -> None:
        table, datas, offset = bytearray(), [], 0
        for name, dims, kind, start in header.tensors:
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
            data = raw[header.data_start + start:header.data_start + start + math.prod(dims) // block * size]
            if kind == q5_0:
                data, kind = widen(data), q8_0
            encoded = name.encode()
            table += struct.pack(f"<Q{len(encoded)}sI{len(dims)}QIQ", len(encoded), encoded, len(dims), *dims, kind,
                                 offset)
            datas.append((offset, data))
            offset += -(-len(data) // header.alignment) * header.alignment
        with path.open("wb") as handle:
            handle.write(raw[:header.tensors_start].tobytes())  # magic, version, counts and metadata as they were
            handle.write(table)
            handle.write(b"\0" * (-handle.tell() % header.alignment))
            base = handle.tell()
            for start, data in datas:
                handle.write(b"\0" * (base + start - handle.tell()))
                handle.write(np.ascontiguousarray(data).data)

    _write_atomically(out_path, write)
    return out_path


_GGUF_VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
"""Bytes of each fixed-size GGUF value type (``gguf.GGUFValueType``: the ints, floats and bool)."""


class _GgufHeader:
    """Where a GGUF file's tensor table and data start, its alignment, and its tensors (name, dims, type, offset)."""

    _STRING, _ARRAY, _UINT32 = 8, 9, 4

    def __init__(self, raw: Any, path: Path) -> None:
        self._raw, self._pos = raw, 4
        if bytes(raw[:4]) != b"GGUF" or self._unpack("<I", 4)[0] != 3:
            raise ProcmemError(f"{path} is not a GGUF (version 3) file", where=str(path),
                               fix="pass a GGUF model file written by llama.cpp's converters")
        n_tensors, n_kv = self._unpack("<QQ", 16)
        self.alignment = 32
        for _ in range(n_kv):
            key = self._string()
            kind = self._unpack("<I", 4)[0]
            if key == "general.alignment" and kind == self._UINT32:
                self.alignment = self._unpack("<I", 4)[0]
            else:
                self._skip(kind, path)
        self.tensors_start = self._pos
        self.tensors: list[tuple[str, list[int], int, int]] = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._unpack("<I", 4)[0]
            dims = list(self._unpack(f"<{n_dims}Q", 8 * n_dims))
            kind, offset = self._unpack("<IQ", 12)
            self.tensors.append((name, dims, kind, offset))
        self.data_start = self._pos + (-self._pos % self.alignment)

    def _unpack(self, layout: str, size: int) -> tuple[Any, ...]:
        values = struct.unpack_from(layout, self._raw, self._pos)
        self._pos += size
        return values

    def _string(self) -> str:
        length = self._unpack("<Q", 8)[0]
        self._pos += length
        return bytes(self._raw[self._pos - length:self._pos]).decode("utf-8", "replace")

    def _skip(self, kind: int, path: Path) -> None:
        if kind == self._STRING:
            length = self._unpack("<Q", 8)[0]
            self._pos += length
        elif kind == self._ARRAY:
            item, count = self._unpack("<IQ", 12)
            if item in _GGUF_VALUE_SIZES:
                self._pos += count * _GGUF_VALUE_SIZES[item]
            else:
                for _ in range(count):
                    self._skip(item, path)
        elif kind in _GGUF_VALUE_SIZES:
            self._pos += _GGUF_VALUE_SIZES[kind]
        else:
            raise ProcmemError(f"{path}: unknown GGUF value type {kind}", where=str(path),
                               fix="pass a GGUF model file written by llama.cpp's converters")


def _model_writer(path: Path, arch: str, name: str, config: dict[str, Any]) -> Any:
    """A GGUF writer for a model file, with the transformer sizes every architecture states, from a Hugging Face
    ``config.json``."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    return writer


def write_bert_gguf(model_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the Hugging Face BERT encoder in ``model_dir`` (``config.json``, ``vocab.txt``,
    ``model.safetensors``; a sentence-transformers model with mean pooling) as a GGUF file at ``out``
    (atomically): the layers' weight matrices in F16, everything else (embedding tables, norms, biases) in F32, as
    llama.cpp's own converter writes ``--outtype f16``. llama.cpp then computes the mean-pooled embedding, without
    torch; the caller normalises. F16 matrices run ~1.2x faster than F32 on CPU and change all-MiniLM-L6-v2's
    vectors by less than 1e-5 in cosine (measured on 120 task prompts)."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    weights = load_file(str(model_dir / "model.safetensors"))
    n_layers = int(config["num_hidden_layers"])

    def write(path: Path) -> None:
        writer = _model_writer(path, "bert", model_dir.name, config)
        writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))
        writer.add_causal_attention(False)
        writer.add_pooling_type(gguf.PoolingType.MEAN)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        _add_wordpiece_vocab(writer, vocab, int(config.get("type_vocab_size", 2)))
        for hf_name, data in sorted(weights.items()):
            if hf_name.endswith("position_ids") or hf_name.startswith("pooler."):
                continue  # a buffer, and the [CLS] pooler that mean pooling does not use
            name = gguf_tensor_name(hf_name, n_layers, arch="bert")
            if name is None:
                raise ProcmemError(f"{hf_name} has no GGUF tensor name", where=str(model_dir),
                                   fix="only BERT encoders (BertModel) are supported")
            matrix = data.ndim == 2 and name.startswith("blk.")  # a layer's projection, not a lookup table
            writer.add_tensor(name, data.astype(np.float16 if matrix else np.float32))
        _finish(writer)

    out_path = Path(out)
    _write_atomically(out_path, write)
    return out_path


# --------------------------------------------------------------------------------------------- helpers


def _model_arch(arch: str) -> Any:
    import gguf

    for key, value in gguf.MODEL_ARCH_NAMES.items():
        if value == arch:
            return key
    raise ProcmemError(f"unknown GGUF architecture {arch!r}", where="arch", fix="use gemma3")


def _read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    try:
        config: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ProcmemError(f"cannot read the adapter config: {err}", where=str(path), fix=_LORA_FIX) from err
    unsupported = [key for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save") if config.get(key)]
    if config.get("peft_type", "LORA") != "LORA":
        unsupported.append(f"peft_type={config.get('peft_type')}")
    if unsupported:
        raise ProcmemError(f"llama.cpp cannot apply this adapter exactly ({', '.join(unsupported)})", where=str(path),
                           fix=_LORA_FIX)
    if "r" not in config or "lora_alpha" not in config:
        raise ProcmemError("the adapter config lacks r or lora_alpha", where=str(path), fix=_LORA_FIX)
    return config


def _lora_pairs(adapter_dir: Path) -> dict[str, tuple[Any, Any]]:
    """``{hf module name: (lora_A, lora_B)}`` as float32 numpy arrays."""
    path = adapter_dir / "adapter_model.safetensors"
    tensors = _load_safetensors(path)
    parts: dict[str, dict[str, Any]] = {}
    for name, data in tensors.items():
        match = _LORA_TENSOR.match(name.removeprefix(_PEFT_PREFIX))
        if match is None:
            raise ProcmemError(f"unexpected tensor {name}: not a lora_A or lora_B weight", where=str(path),
                               fix=_LORA_FIX)
        parts.setdefault(match.group("base"), {})[match.group("part")] = data
    pairs = {}
    for base, part in parts.items():
        if set(part) != {"A", "B"}:
            raise ProcmemError(f"{base} has lora_{''.join(part)} without its partner", where=str(path), fix=_LORA_FIX)
        pairs[base] = (part["A"], part["B"])
    if not pairs:
        raise ProcmemError("the adapter holds no LoRA weights", where=str(path), fix=_LORA_FIX)
    return pairs


def _load_safetensors(path: Path) -> dict[str, Any]:
    import numpy as np

    try:
        from safetensors.numpy import load_file

        return {name: data.astype(np.float32) for name, data in load_file(str(path)).items()}
    except TypeError:  # bfloat16 has no numpy dtype: go through torch (only then)
        from safetensors.torch import load_file as load_torch

        return {name: data.float().numpy() for name, data in load_torch(str(path)).items()}
    except (OSError, ValueError) as err:
        raise ProcmemError(f"cannot read the adapter weights: {err}", where=str(path), fix=_LORA_FIX) from err


def _add_byte_level_vocab(writer: Any, tokenizer: dict[str, Any], config: dict[str, Any]) -> None:
    import gguf

    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    added = {entry["content"]: entry["id"] for entry in tokenizer.get("added_tokens", [])}
    tokens = [""] * (max([*vocab.values(), *added.values()]) + 1)
    for token, index in {**vocab, **added}.items():
        tokens[index] = token
    special = {added.get(t) for t in ("<pad>", "<eos>", "<bos>")} | {
        config.get(key) for key in ("pad_token_id", "eos_token_id", "bos_token_id")}
    unknown = added.get("<unk>")
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.UNKNOWN if i == unknown
             else gguf.TokenType.NORMAL for i in range(len(tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # llama.cpp requires a merges list, and gguf skips an empty one: one merge of two NUL bytes (whose result is
    # no token, so llama.cpp falls back to the bytes: tokenization stays one token per byte, as in transformers).
    writer.add_token_merges(["Ā Ā"])
    writer.add_bos_token_id(int(config["bos_token_id"]))
    writer.add_eos_token_id(int(config["eos_token_id"]))
    writer.add_pad_token_id(int(config["pad_token_id"]))
    if unknown is not None:
        writer.add_unk_token_id(unknown)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


def _add_wordpiece_vocab(writer: Any, vocab: list[str], type_count: int) -> None:
    """BERT's WordPiece vocabulary as llama.cpp's ``bert`` tokenizer reads it: a word-initial piece carries a
    leading U+2581 ("phantom space"), a ``##`` continuation loses its ``##``; ``[...]`` tokens stay as they are."""
    import gguf

    def phantom(token: str) -> str:
        if token.startswith("[") and token.endswith("]"):
            return token
        return token[2:] if token.startswith("##") else "\u2581" + token

    ids = {token: index for index, token in enumerate(vocab)}
    special = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    missing = sorted(special - ids.keys())
    if missing:
        raise ProcmemError(f"the vocabulary lacks {', '.join(missing)}", where="vocab.txt",
                           fix="use a BERT WordPiece vocabulary")
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_type_count(type_count)
    writer.add_token_list([phantom(token) for token in vocab])
    writer.add_token_types([gguf.TokenType.UNKNOWN if token == "[UNK]" else gguf.TokenType.CONTROL
                            if token in special else gguf.TokenType.NORMAL for token in vocab])
    writer.add_bos_token_id(ids["[CLS]"])  # llama.cpp's bert vocabulary starts a text with BOS = [CLS]
    writer.add_eos_token_id(ids["[SEP]"])
    writer.add_sep_token_id(ids["[SEP]"])
    writer.add_unk_token_id(ids["[UNK]"])
    writer.add_pad_token_id(ids["[PAD]"])
    writer.add_mask_token_id(ids["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _staging(path) as staging:
        write(staging)
        staging.chmod(0o644)
        os.replace(staging, path)


@contextmanager
def _staging(path: Path) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    staging = Path(name)
    try:
        yield staging
    finally:
        staging.unlink(missing_ok=True)
