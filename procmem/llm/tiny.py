"""A tiny, randomly initialised Gemma 3 model with a byte-level tokenizer, built offline.

It is what tests, the smoke eval and CI run on (``--model local:tiny``): the same architecture and
code paths as the bundled model, at a size that trains and generates in milliseconds. Its output is
noise; it exists to exercise plumbing, never to measure quality.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["build_tiny_model"]

_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3: pad=0, eos=1, bos=2 as in Gemma 3


def build_tiny_model(directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write the tiny model and tokenizer into ``directory`` (atomically) and return it.

    An existing complete directory is reused as is.
    """
    directory = Path(directory)
    if (directory / "config.json").exists():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=directory.parent))
    try:
        _build_tokenizer().save_pretrained(staging)
        _build_model(seed).save_pretrained(staging)
        os.replace(staging, directory)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (directory / "config.json").exists():  # a concurrent builder did not win either
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(_SPECIALS + sorted(byte_chars))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        padding_side="left",
    )


def _build_model(seed: int):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(_SPECIALS) + 256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=2048,
        sliding_window=512, layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
    )
    return Gemma3ForCausalLM(config).eval()
