"""Tiny, randomly initialised language models and tokenizers for fast tests (no network).

Tokenizers are byte-level BPEs trained in a few milliseconds on the project's templates, with
the special-token conventions of real model families:

* ``"llama"``: distinct ``<s>`` / ``</s>``, no pad token;
* ``"smollm"``: ``<|im_start|>`` / ``<|im_end|>`` with pad == eos (as SmolLM2);
* ``"gpt2"``: a single ``<|endoftext|>`` for bos and eos, no pad token (as GPT-2 and Phi-2).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PhiConfig,
    PreTrainedTokenizerFast,
)

from facephi.data.templates import ANSWER_TEMPLATES, CAPTION_TEMPLATES, INSTRUCTIONS, SYSTEM_PROMPT
from facephi.labels import CLASSES, display_name

SPECIALS = {
    "llama": {"bos_token": "<s>", "eos_token": "</s>"},
    "smollm": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"},
    "gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
}
ARCHITECTURES = ("llama", "phi", "gpt2")


def _corpus() -> list[str]:
    lines = [SYSTEM_PROMPT + " Users: AI:", *INSTRUCTIONS, *CAPTION_TEMPLATES]
    for name in CLASSES:
        lines += [t.format(emotion=display_name(name)) for t in ANSWER_TEMPLATES]
    return lines


def tiny_tokenizer(style: str = "llama", vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the special tokens of ``style`` (see module docstring)."""
    specials = SPECIALS[style]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=sorted(set(specials.values())),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **specials)


def tiny_llm(architecture: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> torch.nn.Module:
    """A 2-layer causal LM of ``architecture`` ("llama", "phi", "gpt2") with hidden size 32."""
    vocab_size = len(tokenizer)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if architecture == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             tie_word_embeddings=True, **ids)
    elif architecture == "phi":
        config = PhiConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=256, partial_rotary_factor=0.5, **ids)
    elif architecture == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256, **ids)
    else:
        raise ValueError(architecture)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


class TinyEncoder(torch.nn.Module):
    """Stand-in for ``LandmarkEncoder``: ``[B, 478, 3] -> [B, 256]``, with BatchNorm (mode matters)."""

    def __init__(self, feature_dim: int = 256, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.feature_dim = feature_dim
        self.point_mlp = torch.nn.Linear(3, 16)
        self.norm = torch.nn.BatchNorm1d(16)
        self.head = torch.nn.Linear(16, feature_dim)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        x = self.point_mlp(points).max(dim=1).values
        return self.head(self.norm(x))

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "model.safetensors")
        (directory / "config.json").write_text(json.dumps({"feature_dim": self.feature_dim}))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "TinyEncoder":
        directory = Path(directory)
        encoder = cls(**json.loads((directory / "config.json").read_text()))
        encoder.load_state_dict(load_file(directory / "model.safetensors"))
        return encoder.eval()
