"""FacePhi: landmark encoder -> projector -> one token embedding inside a causal LM (figure 1).

The projected landmark feature replaces the embedding of the ``<landmark>`` placeholder (one per
sequence); the LLM runs from ``inputs_embeds`` only, so any ``AutoModelForCausalLM`` works. The
training loss is the NLL of the answer tokens and [EOS] (eqs. 2-3, mean over label tokens); by
default the LM head is applied only at those positions (hidden states from ``llm.base_model``,
logits from ``llm.get_output_embeddings()``), which gives the same loss as the full-vocabulary
head at a fraction of its cost. Set ``FacePhiConfig.answer_only_head = False`` for models whose
forward post-processes the logits (e.g. logit soft-capping).

Saved layout (``save_pretrained``)::

    config.json              FacePhiConfig
    encoder/                 LandmarkEncoder.save_pretrained
    projector.safetensors
    tokenizer/               tokenizer with <landmark> and [PAD]
    llm/                     full LLM weights (HF format) - when the LLM was fine-tuned or save_llm=True
    adapter/                 LoRA weights (adapter.safetensors, keyed by LLM parameter names;
                             hyper-parameters in config.lora) - when stage 2 used LoRA

Without ``llm/`` the base LLM is referenced by ``config.llm`` / ``config.gguf_file`` and loaded
with ``load_language_model`` (the rows of the added tokens are initialised deterministically, so
the reloaded model is identical). Everything is safetensors/JSON; loading never executes code.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from facephi.config import Config
from facephi.data.instruction import IGNORE_INDEX, PromptFormatter, prepare_tokenizer
from facephi.data.templates import LANDMARK_TOKEN
from facephi.model.checkpoints import FACEPHI, FACEPHI_CONFIG_TYPE, check_model_dir
from facephi.model.llm import DEFAULT_LLM, load_causal_lm, load_language_model
from facephi.model.projector import Projector, ProjectorConfig
from facephi.utils.errors import FacePhiError
from facephi.utils.io import atomic_dir, read_json, write_json

CONFIG_TYPE = FACEPHI_CONFIG_TYPE
"""``config_type`` field of a FacePhi model's ``config.json`` (encoders use their own)."""

DEFAULT_LORA: dict[str, Any] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
"""LoRA hyper-parameters of stage 2 with ``lora=True`` (``all-linear`` excludes the LM head)."""


@dataclass
class FacePhiConfig(Config):
    """Configuration of a FacePhi model (``config.json`` of a saved model)."""

    llm: str = DEFAULT_LLM
    gguf_file: str | None = None
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    landmark_token: str = LANDMARK_TOKEN
    encoder: dict[str, Any] = field(default_factory=dict)
    """The encoder's own configuration, for provenance (its weights live in ``encoder/``)."""
    dtype: str = "float32"
    max_length: int = 128
    """Token length of the training sequences (``PromptFormatter``)."""
    llm_weights: str = "base"
    """"base" (LLM as shipped), "full" (fine-tuned) or "lora" (base + adapter)."""
    lora: dict[str, Any] | None = None
    answer_only_head: bool = True

    config_type: ClassVar[str] = CONFIG_TYPE

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise FacePhiError(f"FacePhiConfig: unknown dtype {self.dtype!r}")
        return dtype


@dataclass
class FacePhiOutput:
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def _encoder_config(encoder: nn.Module) -> dict[str, Any]:
    config = getattr(encoder, "config", None)
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    return asdict(config) if is_dataclass(config) else {}


class FacePhiModel(nn.Module):
    """Encoder (always frozen) + projector + causal LM, sharing one prepared tokenizer."""

    def __init__(self, config: FacePhiConfig, encoder: nn.Module, llm: Any, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        prepare_tokenizer(tokenizer)
        self._resize_embeddings(llm, len(tokenizer))
        self.landmark_id: int = tokenizer.convert_tokens_to_ids(config.landmark_token)
        config.projector.output_dim = llm.get_input_embeddings().embedding_dim
        config.encoder = config.encoder or _encoder_config(encoder)
        self.encoder = encoder.requires_grad_(False).eval()
        self.projector = Projector(config.projector)
        self.llm = llm
        self.formatter = PromptFormatter(tokenizer, config.max_length)

    @classmethod
    def from_encoder(cls, encoder: nn.Module, config: FacePhiConfig | None = None) -> "FacePhiModel":
        """A new model around ``encoder`` with the LLM named in ``config`` (untrained projector)."""
        config = config or FacePhiConfig()
        llm, tokenizer = load_language_model(config.llm, config.gguf_file, dtype=config.torch_dtype)
        return cls(config, encoder, llm, tokenizer)

    @staticmethod
    def _resize_embeddings(llm: Any, vocab_size: int) -> None:
        """Grow the embeddings to ``vocab_size``; new rows = mean of the old rows (deterministic)."""
        old = llm.get_input_embeddings().num_embeddings
        if vocab_size <= old:
            return
        llm.resize_token_embeddings(vocab_size, mean_resizing=False)
        with torch.no_grad():
            weights = [llm.get_input_embeddings().weight]
            head = llm.get_output_embeddings()
            if head is not None and head.weight is not weights[0]:
                weights.append(head.weight)
                if getattr(head, "bias", None) is not None:
                    head.bias[old:] = head.bias[:old].mean()
            for weight in weights:
                weight[old:] = weight[:old].mean(dim=0)

    # ------------------------------------------------------------------ training state
    def train(self, mode: bool = True) -> "FacePhiModel":
        """Like ``nn.Module.train`` but the encoder stays in eval mode (frozen BatchNorm statistics)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def set_trainable(self, stage: int, lora: bool = False, lora_config: dict[str, Any] | None = None) -> None:
        """Stage 1: projector only. Stage 2: projector + LLM (full) or + LoRA adapter. Encoder: never."""
        if stage not in (1, 2):
            raise FacePhiError(f"set_trainable: stage must be 1 or 2, got {stage}")
        self.requires_grad_(False)
        self.projector.requires_grad_(True)
        if stage == 2 and lora:
            if self.config.llm_weights == "full":
                raise FacePhiError("set_trainable: LoRA on top of a fully fine-tuned LLM is not supported")
            if not self.has_lora:
                self.config.lora = {**DEFAULT_LORA, **(lora_config or {})}
                self._inject_lora()
            for name, param in self.llm.named_parameters():
                param.requires_grad_("lora_" in name)
            self.config.llm_weights = "lora"
        elif stage == 2:
            if self.config.llm_weights == "lora":
                raise FacePhiError("set_trainable: this model has a LoRA adapter; continue with lora=True")
            self.llm.requires_grad_(True)
            self.config.llm_weights = "full"

    @property
    def has_lora(self) -> bool:
        return any("lora_" in name for name, _ in self.llm.named_parameters())

    def _inject_lora(self) -> None:
        """Insert LoRA layers (``config.lora``) into the LLM in place; the LLM keeps its class."""
        from peft import LoraConfig, inject_adapter_in_model

        inject_adapter_in_model(LoraConfig(task_type="CAUSAL_LM", **(self.config.lora or DEFAULT_LORA)), self.llm)

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA parameters, keyed by their names in the LLM."""
        return {name: param.detach().contiguous() for name, param in self.llm.named_parameters() if "lora_" in name}

    # ------------------------------------------------------------------ forward
    def embed(self, input_ids: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the projected landmark feature at each ``<landmark>`` position."""
        is_landmark = input_ids == self.landmark_id
        counts = is_landmark.sum(dim=1)
        if not bool((counts == 1).all()):
            raise FacePhiError(f"each sequence needs exactly one {self.config.landmark_token} token; "
                               f"got counts {counts.tolist()}")
        if points.shape[0] != input_ids.shape[0]:
            raise FacePhiError(f"batch size mismatch: {points.shape[0]} landmark sets for {input_ids.shape[0]} sequences")
        embeddings = self.llm.get_input_embeddings()(input_ids)
        features = self.encoder(points)
        projected = self.projector(features.to(self.projector.net[0].weight.dtype)).to(embeddings.dtype)
        return torch.where(is_landmark.unsqueeze(-1), projected.unsqueeze(1), embeddings)

    @staticmethod
    def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
        """Positions counted from the first real token (correct for left padding)."""
        return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, points: torch.Tensor,
                labels: torch.Tensor | None = None) -> FacePhiOutput:
        """Loss over the label tokens when ``labels`` is given, else the full logits."""
        inputs_embeds = self.embed(input_ids, points)
        kwargs = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask,
                  "position_ids": self.position_ids(attention_mask)}
        if labels is None or not self.config.answer_only_head:
            output = self.llm(**kwargs, labels=labels, use_cache=False)
            return FacePhiOutput(loss=output.loss, logits=output.logits)
        hidden = self.llm.base_model(**kwargs, use_cache=False).last_hidden_state
        return FacePhiOutput(loss=self.label_loss(hidden, labels))

    def label_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean NLL of the next-token labels, the LM head applied only where a label is set."""
        targets = labels[:, 1:]
        selected = targets != IGNORE_INDEX
        if not bool(selected.any()):
            raise FacePhiError("label_loss: the batch has no label token (all labels are -100)")
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][selected])
        return F.cross_entropy(logits.float(), targets[selected])

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, points: torch.Tensor,
                 max_new_tokens: int = 32, **generate_kwargs: Any) -> list[str]:
        """Answers for a left-padded batch of prompts (greedy unless ``generate_kwargs`` say otherwise)."""
        from transformers import GenerationConfig

        tokenizer = self.tokenizer
        suppressed = sorted({self.landmark_id, tokenizer.pad_token_id} - {tokenizer.eos_token_id})
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id, suppress_tokens=suppressed)
        config.update(**generate_kwargs)
        was_training = self.training
        self.eval()
        try:
            new_tokens = self.llm.generate(inputs_embeds=self.embed(input_ids, points), attention_mask=attention_mask,
                                           generation_config=config)
        finally:
            self.train(was_training)
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def answer(self, points: torch.Tensor, instructions: list[str], max_new_tokens: int = 32) -> list[str]:
        """Greedy answers to ``instructions`` (one per landmark set of ``points`` ``[B, 478, 3]``,
        normalised): the one prediction path (prompt layout, left padding, ``generate``) of
        evaluation and ``facephi predict``. Inputs are moved to the model's device."""
        if len(instructions) != len(points):
            raise FacePhiError(f"answer: {len(instructions)} instructions for {len(points)} landmark sets")
        batch = self.formatter.pad_prompts([self.formatter.encode_prompt(text) for text in instructions])
        device = self.projector.net[0].weight.device
        return self.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                             torch.as_tensor(points).to(device), max_new_tokens=max_new_tokens)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike[str], save_llm: bool | None = None) -> None:
        """Write the model to ``directory`` atomically (see the module docstring for the layout).

        ``save_llm``: None = save the full LLM weights only when they were fine-tuned; True =
        always (self-contained folder); False = never (reference ``config.llm``; only valid while
        the LLM is unchanged). With LoRA only the adapter is saved and the base is referenced.
        """
        directory = Path(directory)
        if save_llm is None:
            save_llm = self.config.llm_weights == "full"
        if self.config.llm_weights == "full" and not save_llm:
            raise FacePhiError("save_pretrained: the LLM was fine-tuned; its weights must be saved (save_llm=True)")
        if self.config.llm_weights == "lora" and save_llm:
            raise FacePhiError("save_pretrained: with LoRA only the adapter is saved (save_llm must not be True)")
        with atomic_dir(directory) as tmp:
            self.encoder.save_pretrained(tmp / "encoder")
            save_file({k: v.contiguous() for k, v in self.projector.state_dict().items()}, tmp / "projector.safetensors")
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            if self.config.llm_weights == "lora":
                (tmp / "adapter").mkdir()
                save_file(self.lora_state_dict(), tmp / "adapter" / "adapter.safetensors")
            elif save_llm:
                self.llm.save_pretrained(tmp / "llm")
            write_json(tmp / "config.json", self.config.to_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str],
                        encoder_loader: Callable[[Path], nn.Module] | None = None) -> "FacePhiModel":
        """Load a saved model. ``encoder_loader(path)`` defaults to ``LandmarkEncoder.from_pretrained``."""
        from transformers import AutoTokenizer

        directory = Path(directory)
        check_model_dir(directory, flag=None, expect=FACEPHI)  # every file, before the LLM is loaded
        try:
            data = read_json(directory / "config.json")
        except ValueError as exc:
            raise FacePhiError(str(exc)) from exc
        config = FacePhiConfig.from_dict(data, source=str(directory / "config.json"))
        if encoder_loader is None:
            from facephi.model.encoder import LandmarkEncoder

            encoder_loader = LandmarkEncoder.from_pretrained
        encoder = encoder_loader(directory / "encoder")
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer", local_files_only=True)
        if (directory / "llm").is_dir():
            llm = load_causal_lm(str(directory / "llm"), dtype=config.torch_dtype)
        else:
            llm, _ = load_language_model(config.llm, config.gguf_file, dtype=config.torch_dtype)
        model = cls(config, encoder, llm, tokenizer)
        model.projector.load_state_dict(load_file(directory / "projector.safetensors"))
        if config.llm_weights == "lora":
            if not (directory / "adapter").is_dir():
                raise FacePhiError(f"{directory}: config says llm_weights='lora' but adapter/ is missing")
            model._inject_lora()
            weights = load_file(directory / "adapter" / "adapter.safetensors")
            if set(weights) != set(model.lora_state_dict()):
                raise FacePhiError(f"{directory / 'adapter'}: the adapter does not match config.lora and the LLM")
            model.llm.load_state_dict(weights, strict=False)
        model.requires_grad_(False)
        return model.eval()
