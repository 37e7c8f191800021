"""Appendix-A layout: padding, attention mask, labels, truncation, template sampling, dataset."""

import numpy as np
import pytest
import torch
from tiny_models import SPECIALS, tiny_tokenizer

from facephi.data.instruction import (
    IGNORE_INDEX,
    InstructionDataset,
    PromptFormatter,
    prepare_tokenizer,
    sample_conversation,
)
from facephi.data.templates import ANSWER_TEMPLATES, INSTRUCTIONS, LANDMARK_TOKEN, PAD_TOKEN, SYSTEM_PROMPT
from facephi.labels import CLASSES
from facephi.utils.errors import FacePhiError

ANSWER = ANSWER_TEMPLATES[0].format(emotion="Happiness")


def formatter(style: str, max_length: int = 200) -> PromptFormatter:
    tokenizer = tiny_tokenizer(style)
    prepare_tokenizer(tokenizer)
    return PromptFormatter(tokenizer, max_length)


@pytest.mark.parametrize("style", sorted(SPECIALS))
def test_prepare_tokenizer_adds_landmark_and_real_pad(style):
    tokenizer = tiny_tokenizer(style)
    size = len(tokenizer)
    assert prepare_tokenizer(tokenizer) == 2
    assert prepare_tokenizer(tokenizer) == 0  # idempotent
    assert len(tokenizer) == size + 2
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.tokenize(f"a {LANDMARK_TOKEN} b").count(LANDMARK_TOKEN) == 1  # never split


def test_formatter_requires_prepared_tokenizer():
    with pytest.raises(FacePhiError, match="prepare_tokenizer"):
        PromptFormatter(tiny_tokenizer("llama"), 64)


@pytest.mark.parametrize("style", sorted(SPECIALS))
def test_training_layout_masks_and_labels(style):
    fmt = formatter(style)
    tok = fmt.tokenizer
    item = fmt.encode_train(INSTRUCTIONS[0], ANSWER)
    ids, mask, labels = (item[k].tolist() for k in ("input_ids", "attention_mask", "labels"))
    print(fmt.describe(ids, labels))
    assert len(ids) == len(mask) == len(labels) == 200
    n_pad = mask.index(1)
    assert mask == [0] * n_pad + [1] * (200 - n_pad)  # zeros exactly on the left pads
    assert ids[:n_pad] == [fmt.pad_id] * n_pad and ids[n_pad] == fmt.bos_id
    assert ids.count(fmt.landmark_id) == 1
    # labels: -100 everywhere except the answer and [EOS], which end the sequence
    answer_ids = tok(" " + ANSWER, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n_label = len(answer_ids)
    assert labels[-n_label:] == answer_ids == ids[-n_label:]
    assert labels[:-n_label] == [IGNORE_INDEX] * (200 - n_label)
    text = tok.decode(ids[n_pad + 1:])
    assert text == f"{SYSTEM_PROMPT} Users:{LANDMARK_TOKEN} {INSTRUCTIONS[0]} AI: {ANSWER}{tok.eos_token}"


def test_generation_prompt_is_the_prefix_of_the_training_sequence():
    fmt = formatter("gpt2")
    item = fmt.encode_train(INSTRUCTIONS[3], ANSWER)
    prompt = fmt.encode_prompt(INSTRUCTIONS[3])
    real = item["input_ids"][item["attention_mask"].bool()].tolist()
    assert real[: len(prompt)] == prompt
    assert (item["labels"][-(len(real) - len(prompt)):] != IGNORE_INDEX).all()
    assert fmt.tokenizer.decode(prompt).endswith(" AI:")


def test_left_truncation_keeps_bos_landmark_instruction_and_answer():
    full = formatter("llama").encode_train(INSTRUCTIONS[4], ANSWER)
    n_real = int(full["attention_mask"].sum())
    fmt = formatter("llama", max_length=n_real - 5)
    item = fmt.encode_train(INSTRUCTIONS[4], ANSWER)
    assert int(item["attention_mask"].sum()) == n_real - 5  # no padding left
    ids = item["input_ids"].tolist()
    assert ids[0] == fmt.bos_id and ids.count(fmt.landmark_id) == 1
    kept = full["input_ids"][-(n_real - 5 - 1):].tolist()  # everything after BOS comes from the right end
    assert ids[1:] == kept
    assert torch.equal(item["labels"][item["labels"] != IGNORE_INDEX], full["labels"][full["labels"] != IGNORE_INDEX])
    assert len(fmt.encode_prompt(INSTRUCTIONS[4])) <= fmt.max_length


def test_too_short_max_length_is_a_clear_error():
    fmt = formatter("llama", max_length=20)
    with pytest.raises(FacePhiError, match="max_length=20 is too small"):
        fmt.encode_train(INSTRUCTIONS[0], ANSWER)
    with pytest.raises(FacePhiError, match="too small"):
        formatter("llama", max_length=3).encode_prompt(INSTRUCTIONS[0])


def test_masks_are_positional_when_bos_equals_eos():
    fmt = formatter("gpt2")  # <|endoftext|> is both BOS and EOS
    item = fmt.encode_train(INSTRUCTIONS[1], ANSWER)
    ids, mask, labels = item["input_ids"], item["attention_mask"], item["labels"]
    eos_positions = (ids == fmt.eos_id).nonzero().flatten().tolist()
    assert len(eos_positions) == 2  # BOS and the final EOS
    assert mask[eos_positions].tolist() == [1, 1]
    assert labels[eos_positions].tolist() == [IGNORE_INDEX, fmt.eos_id]


def test_pad_prompts_left_pads():
    fmt = formatter("llama")
    batch = fmt.pad_prompts([[5, 6, 7], [8]])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [fmt.pad_id, fmt.pad_id, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert fmt.pad_prompts([[1]], length=3)["attention_mask"].tolist() == [[0, 0, 1]]
    with pytest.raises(FacePhiError):
        fmt.pad_prompts([[1, 2]], length=1)


def test_sample_conversation_is_deterministic_and_covers_templates():
    draws = [sample_conversation(1, np.random.default_rng(s)) for s in range(200)]
    assert draws[:5] == [sample_conversation("happy", np.random.default_rng(s)) for s in range(5)]
    assert {d[0] for d in draws} == set(INSTRUCTIONS)
    assert {d[1] for d in draws} == {t.format(emotion="Happiness") for t in ANSWER_TEMPLATES}


class FakeLandmarks(torch.utils.data.Dataset):
    def __init__(self, n: int = 6):
        self.indices = list(range(100, 100 + n))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return {"points": torch.zeros(478, 3), "label": i % len(CLASSES), "index": self.indices[i]}


def test_instruction_dataset_is_deterministic_per_sample_and_epoch():
    fmt = formatter("smollm")
    data = InstructionDataset(FakeLandmarks(), fmt, seed=3)
    first = [data[i]["instruction"] + data[i]["answer"] for i in range(len(data))]
    assert [data[i]["instruction"] + data[i]["answer"] for i in reversed(range(len(data)))] == first[::-1]
    assert [InstructionDataset(FakeLandmarks(), fmt, seed=3)[i]["answer"] for i in range(6)] == [
        data[i]["answer"] for i in range(6)]
    data.set_epoch(1)
    assert [data[i]["instruction"] + data[i]["answer"] for i in range(len(data))] != first
    item = data[2]
    assert set(item) >= {"points", "label", "index", "input_ids", "attention_mask", "labels", "instruction"}
    assert CLASSES[2].capitalize() in item["answer"]
    assert item["input_ids"].shape == (200,)


def test_generation_dataset_and_collate():
    fmt = formatter("llama")
    data = InstructionDataset(FakeLandmarks(), fmt, seed=0, for_generation=True)
    batch = fmt.collate_prompts([data[i] for i in range(3)])
    width = max(len(fmt.encode_prompt(data[i]["instruction"])) for i in range(3))
    assert batch["input_ids"].shape == (3, width) and batch["points"].shape == (3, 478, 3)
    assert batch["index"].tolist() == [100, 101, 102] and len(batch["instruction"]) == 3
    for row in range(3):
        real = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert real == fmt.encode_prompt(data[row]["instruction"])


def test_smollm2_layout_with_the_real_tokenizer():
    from facephi.model.llm import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"  # why a real [PAD] is needed
    assert prepare_tokenizer(tokenizer) == 2
    fmt = PromptFormatter(tokenizer, max_length=96)
    item = fmt.encode_train(INSTRUCTIONS[0], ANSWER)
    print(fmt.describe(item["input_ids"].tolist(), item["labels"].tolist()))
    real = item["input_ids"][item["attention_mask"].bool()].tolist()
    tokens = tokenizer.convert_ids_to_tokens(real)
    assert tokens[:2] == ["<|im_start|>", "Below"]
    at = tokens.index(LANDMARK_TOKEN)
    assert tokens[at - 2: at + 3] == ["ĠUsers", ":", LANDMARK_TOKEN, "ĠCan", "Ġyou"]
    assert tokens[-3:] == ["ĠHappiness", ".", "<|im_end|>"]
    assert tokenizer.decode(real) == (f"<|im_start|>{SYSTEM_PROMPT} Users:{LANDMARK_TOKEN} {INSTRUCTIONS[0]} "
                                      f"AI: {ANSWER}<|im_end|>")
    labelled = item["labels"][item["labels"] != IGNORE_INDEX].tolist()
    assert tokenizer.decode(labelled) == f" {ANSWER}<|im_end|>"
    assert 60 < len(real) <= 96
