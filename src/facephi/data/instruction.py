"""Instruction data of appendix A: prompt layout, masks, labels and the instruction dataset.

Layout of one training example (appendix A.1, figure 2)::

    [PAD] ... [PAD] [BOS] <system prompt> Users: <landmark> <instruction> AI: <answer> [EOS]

* left padding to ``max_length``; the attention mask is 0 on the pads and 1 elsewhere;
* labels are -100 everywhere except the answer tokens and [EOS] (eqs. 2-3);
* too long examples lose prompt tokens from the left, right after [BOS]: the answer, [EOS],
  the instruction and the landmark token are never cut.

Every segment is tokenised on its own and the ids are concatenated, so the answer boundary is
exact for any tokenizer and the generation prompt (``encode_prompt``) is token-for-token the
prefix of the training sequence. [BOS], ``<landmark>`` and [EOS] are inserted by id; the
tokenizer's own ``add_special_tokens`` is never used. Masks are built from positions, never by
comparing ids with the pad id (SmolLM2's pad is its EOS).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from facephi.data.templates import (
    ANSWER_TEMPLATES,
    ASSISTANT_PREFIX,
    INSTRUCTIONS,
    LANDMARK_TOKEN,
    PAD_TOKEN,
    SYSTEM_PROMPT,
    USER_PREFIX,
)
from facephi.labels import CLASSES, canonical_class, display_name
from facephi.utils.errors import FacePhiError

IGNORE_INDEX = -100
"""Label value ignored by the loss."""


def prepare_tokenizer(tokenizer: Any) -> int:
    """Add ``<landmark>`` (extra special token) and a real ``[PAD]`` when needed.

    A pad token is added when the tokenizer has none or when it equals EOS (SmolLM2, GPT-2
    style tokenizers). Idempotent; returns the number of tokens added to the vocabulary
    (resize the LLM's embeddings when it is not 0).
    """
    before = len(tokenizer)
    if LANDMARK_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"extra_special_tokens": [LANDMARK_TOKEN]},
                                     replace_extra_special_tokens=False)
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "left"
    return len(tokenizer) - before


def sample_conversation(label: int | str, rng: np.random.Generator) -> tuple[str, str]:
    """Draw one (instruction, answer) pair for a class index or name, as in appendix A.1."""
    name = CLASSES[label] if isinstance(label, (int, np.integer)) else canonical_class(label)
    instruction = INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))]
    answer = ANSWER_TEMPLATES[int(rng.integers(len(ANSWER_TEMPLATES)))]
    return instruction, answer.format(emotion=display_name(name))


class PromptFormatter:
    """Tokenizer-agnostic encoder of the appendix-A layout (the tokenizer must be prepared)."""

    def __init__(self, tokenizer: Any, max_length: int = 128, landmark_tokens: int = 1) -> None:
        vocab = tokenizer.get_vocab()
        if LANDMARK_TOKEN not in vocab or tokenizer.pad_token is None:
            raise FacePhiError("PromptFormatter: call prepare_tokenizer(tokenizer) first "
                               f"(it adds {LANDMARK_TOKEN!r} and a pad token)")
        if tokenizer.eos_token is None:
            raise FacePhiError(f"PromptFormatter: tokenizer {type(tokenizer).__name__} has no EOS token")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.landmark_tokens = int(landmark_tokens)  # <landmark> placeholders per prompt (the paper: 1)
        if self.landmark_tokens < 1:
            raise FacePhiError(f"PromptFormatter: landmark_tokens must be >= 1, got {landmark_tokens}")
        self.landmark_id: int = vocab[LANDMARK_TOKEN]
        self.pad_id: int = tokenizer.pad_token_id
        self.eos_id: int = tokenizer.eos_token_id
        # GPT-2 / Phi tokenizers have no BOS distinct from <|endoftext|>: the EOS doubles as BOS.
        self.bos_id: int = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos_id
        self._space = "" if self._adds_word_prefix(tokenizer) else " "
        self._system_ids = self._ids(SYSTEM_PROMPT, first=True) + self._ids(USER_PREFIX)
        self._assistant_ids = self._ids(ASSISTANT_PREFIX)

    @staticmethod
    def _adds_word_prefix(tokenizer: Any) -> bool:
        """True for SentencePiece-style tokenizers that already mark a word start on their own."""
        return len(tokenizer.tokenize(" the")) > len(tokenizer.tokenize("the"))

    def _ids(self, text: str, first: bool = False) -> list[int]:
        """Token ids of one segment, with the word separator before it unless it is first."""
        prefix = "" if first else self._space
        return list(self.tokenizer(prefix + text, add_special_tokens=False)["input_ids"])

    @property
    def shared_prefix(self) -> list[int]:
        """[BOS] + system prompt + "Users:": the ids every sequence not cut by ``max_length`` starts with
        (the part before ``<landmark>``, the same for every sample)."""
        return [self.bos_id] + list(self._system_ids)

    def _prompt_parts(self, instruction: str) -> tuple[list[int], list[int]]:
        """(droppable head, kept tail) of the prompt: the head is the system prompt + "Users:"."""
        tail = [self.landmark_id] * self.landmark_tokens + self._ids(instruction) + self._assistant_ids
        return list(self._system_ids), tail

    def encode_prompt(self, instruction: str) -> list[int]:
        """Prompt ids up to and including "AI:" (no padding), for generation."""
        head, tail = self._prompt_parts(instruction)
        ids = [self.bos_id] + head + tail
        if len(ids) > self.max_length:
            keep = self.max_length - 1 - len(tail)
            if keep < 0:
                raise FacePhiError(f"max_length={self.max_length} is too small for the instruction "
                                   f"{instruction!r} ({len(tail) + 1} tokens with [BOS] and {LANDMARK_TOKEN})")
            ids = [self.bos_id] + head[len(head) - keep:] + tail
        return ids

    def encode_train(self, instruction: str, answer: str) -> dict[str, torch.Tensor]:
        """One training example left-padded to ``max_length``: input_ids, attention_mask, labels."""
        head, tail = self._prompt_parts(instruction)
        answer_ids = self._ids(answer) + [self.eos_id]
        room = self.max_length - 1 - len(tail) - len(answer_ids)  # tokens of ``head`` that fit
        if room < 0:
            raise FacePhiError(
                f"max_length={self.max_length} is too small: [BOS] + {LANDMARK_TOKEN} + instruction + "
                f"'{ASSISTANT_PREFIX}' + answer + [EOS] need {self.max_length - room} tokens "
                f"(instruction {instruction!r}, answer {answer!r})")
        head = head[max(0, len(head) - room):]
        prompt = [self.bos_id] + head + tail
        n_pad = self.max_length - len(prompt) - len(answer_ids)
        input_ids = [self.pad_id] * n_pad + prompt + answer_ids
        attention_mask = [0] * n_pad + [1] * (len(prompt) + len(answer_ids))
        labels = [IGNORE_INDEX] * (n_pad + len(prompt)) + answer_ids
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }

    def pad_prompts(self, prompts: Sequence[Sequence[int]], length: int | None = None) -> dict[str, torch.Tensor]:
        """Left-pad prompt ids to ``length`` (default: the longest); returns input_ids, attention_mask."""
        if not prompts:
            raise FacePhiError("pad_prompts: empty batch")
        width = max(len(p) for p in prompts) if length is None else int(length)
        if any(len(p) > width for p in prompts):
            raise FacePhiError(f"pad_prompts: a prompt is longer than length={width}")
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            if ids:
                input_ids[row, width - len(ids):] = torch.as_tensor(list(ids), dtype=torch.long)
                attention_mask[row, width - len(ids):] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def collate_prompts(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Collate ``InstructionDataset(..., for_generation=True)`` items into a left-padded batch."""
        batch = self.pad_prompts([item["input_ids"].tolist() for item in items])
        batch["points"] = torch.stack([torch.as_tensor(item["points"]) for item in items])
        for key in ("label", "index"):
            batch[key] = torch.tensor([int(item[key]) for item in items], dtype=torch.long)
        for key in ("instruction", "answer"):
            batch[key] = [item[key] for item in items]
        return batch

    def describe(self, input_ids: Sequence[int], labels: Sequence[int] | None = None) -> str:
        """One line per token: position, id, token text, attention mask and label (for debugging)."""
        lines = []
        for pos, tok_id in enumerate(input_ids):
            text = self.tokenizer.convert_ids_to_tokens(int(tok_id))
            label = "" if labels is None else f"  label={int(labels[pos])}"
            lines.append(f"{pos:4d} {int(tok_id):7d} {text!r}{label}")
        return "\n".join(lines)


class InstructionDataset(Dataset):
    """Wraps a dataset of ``{"points", "label", "index"}`` items and adds the instruction tokens.

    The (instruction, answer) choice for an item depends only on ``(seed, epoch, item["index"])``:
    it is deterministic, differs between epochs (call ``set_epoch``) and does not depend on the
    order in which items are read or on the subset wrapped. With ``for_generation=True`` the
    items hold the unpadded prompt (``input_ids``) for ``PromptFormatter.collate_prompts``
    instead of the padded training sequence.

    ``votes`` (``[N, 8]`` per landmark-set row, e.g. FER+'s crowd votes): the class the answer
    names is drawn from the item's votes (a separate draw per seed, epoch and item), not its label;
    in expectation the answer loss is the vote-weighted mean of the classes' losses (soft targets).
    The item's ``label`` stays its label; ``answer_class`` is the class its answer names.

    ``class_weights`` (8 non-negative numbers): training items get ``weight``, the weight of the
    class their answer names (the weight of that answer's loss).
    """

    def __init__(self, base_dataset: Dataset, formatter: PromptFormatter, seed: int = 0,
                 for_generation: bool = False, votes: np.ndarray | None = None,
                 class_weights: np.ndarray | None = None) -> None:
        self.base = base_dataset
        self.formatter = formatter
        self.seed = int(seed)
        self.for_generation = for_generation
        self.votes = None if votes is None else np.asarray(votes, dtype=np.float64)
        if self.votes is not None and (self.votes.ndim != 2 or self.votes.shape[1] != len(CLASSES)
                                       or not np.isfinite(self.votes).all() or (self.votes < 0).any()):
            raise FacePhiError(f"InstructionDataset: votes must be finite non-negative [N, {len(CLASSES)}], "
                               f"got shape {list(self.votes.shape)}")
        self.class_weights = None if class_weights is None else np.asarray(class_weights, dtype=np.float64)
        if self.class_weights is not None and (self.class_weights.shape != (len(CLASSES),)
                                               or not np.isfinite(self.class_weights).all()
                                               or (self.class_weights < 0).any()):
            raise FacePhiError(f"InstructionDataset: class_weights must be {len(CLASSES)} finite non-negative "
                               f"numbers, got {self.class_weights.tolist()}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the templates of epoch ``epoch`` (each epoch draws new pairs)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        label = int(item["label"])
        if not 0 <= label < len(CLASSES):
            raise FacePhiError(f"InstructionDataset: sample {item['index']} has no class label ({label})")
        index = int(item["index"])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        named = label if self.votes is None else self._drawn_class(index, label)
        instruction, answer = sample_conversation(named, rng)
        item["instruction"], item["answer"] = instruction, answer
        item["answer_class"] = named
        if self.class_weights is not None:
            item["weight"] = float(self.class_weights[named])
        if self.for_generation:
            item["input_ids"] = torch.tensor(self.formatter.encode_prompt(instruction), dtype=torch.long)
        else:
            item.update(self.formatter.encode_train(instruction, answer))
        return item

    def _drawn_class(self, index: int, label: int) -> int:
        """A class drawn from row ``index``'s votes (its label when it has none)."""
        row = self.votes[index]
        total = row.sum()
        if total <= 0:
            return label
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])  # apart from the template draw
        return int(rng.choice(len(CLASSES), p=row / total))
