"""Tiny models and instruction data for the training tests (no network, a few ms per step)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from facephi.data.instruction import InstructionDataset, PromptFormatter, prepare_tokenizer
from facephi.train.presets import TrainConfig
from tiny_models import TinyEncoder, tiny_llm, tiny_tokenizer


class FakeFacePhi(torch.nn.Module):
    """Stand-in with FacePhiModel's training interface: encoder → projector → <landmark> slot."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.tokenizer = tiny_tokenizer("smollm")
        prepare_tokenizer(self.tokenizer)
        self.llm = tiny_llm("llama", self.tokenizer, seed=seed)
        self.encoder = TinyEncoder(seed=seed)
        torch.manual_seed(seed)
        self.projector = torch.nn.Sequential(torch.nn.Linear(256, 32), torch.nn.GELU(), torch.nn.Linear(32, 32))
        self.landmark_id = self.tokenizer.convert_tokens_to_ids("<landmark>")

    def set_trainable(self, stage: int, lora: bool = False) -> None:
        self.requires_grad_(False)
        self.projector.requires_grad_(True)
        if stage == 2:
            self.llm.requires_grad_(True)

    def forward(self, input_ids, attention_mask, points, labels=None):
        embeds = self.llm.get_input_embeddings()(input_ids)
        slot = input_ids == self.landmark_id
        embeds = embeds.masked_scatter(slot[..., None], self.projector(self.encoder(points)).to(embeds.dtype))
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)

    def save_pretrained(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.state_dict().items() if not k.endswith("lm_head.weight")}
        save_file(state, str(Path(directory) / "model.safetensors"))


def make_model(seed: int = 0):
    model = FakeFacePhi(seed)
    return model, PromptFormatter(model.tokenizer, max_length=96)


def make_dataset(formatter: PromptFormatter, n: int = 16, seed: int = 0) -> InstructionDataset:
    rng = np.random.default_rng(seed)
    points = torch.as_tensor(rng.uniform(-1, 1, size=(n, 478, 3)).astype(np.float32))
    base = [{"points": points[i], "label": i % 8, "index": i} for i in range(n)]
    return InstructionDataset(base, formatter, seed=0)


def tiny_config(stage: int, **changes) -> TrainConfig:
    base = TrainConfig(stage=stage, batch_size=4, grad_accum=2, lr=1e-2, epochs=2, max_length=96,
                       limit_valid=None, save_every=None, log_every=1, num_threads=1, mixed_precision="no",
                       warmup_ratio=0.25)
    return base.override(**changes)
