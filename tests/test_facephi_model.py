"""FacePhiModel with tiny Llama / Phi / GPT-2 LLMs: placeholder, loss, trainability, persistence."""

import pytest
import torch
from tiny_models import TinyEncoder, tiny_llm, tiny_tokenizer

from facephi.data.instruction import IGNORE_INDEX
from facephi.data.templates import ANSWER_TEMPLATES, INSTRUCTIONS
from facephi.model.facephi import FacePhiConfig, FacePhiModel
from facephi.utils.errors import FacePhiError

TOKENIZER_STYLE = {"llama": "llama", "phi": "gpt2", "gpt2": "gpt2"}


def build(architecture: str = "llama", seed: int = 0) -> FacePhiModel:
    tokenizer = tiny_tokenizer(TOKENIZER_STYLE[architecture])
    llm = tiny_llm(architecture, tokenizer, seed=seed)
    torch.manual_seed(seed)
    return FacePhiModel(FacePhiConfig(llm=f"tiny-{architecture}", max_length=96), TinyEncoder(seed=seed), llm, tokenizer)


def train_batch(model: FacePhiModel, pairs=((0, 0), (11, 3), (7, 9))) -> dict[str, torch.Tensor]:
    items = [model.formatter.encode_train(INSTRUCTIONS[i], ANSWER_TEMPLATES[a].format(emotion="Sadness"))
             for i, a in pairs]
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    batch["points"] = torch.randn(len(items), 478, 3, generator=torch.Generator().manual_seed(1))
    return batch


def prompt_batch(model: FacePhiModel, instructions=(1, 0, 7)) -> dict[str, torch.Tensor]:
    batch = model.formatter.pad_prompts([model.formatter.encode_prompt(INSTRUCTIONS[i]) for i in instructions])
    batch["points"] = torch.randn(len(instructions), 478, 3, generator=torch.Generator().manual_seed(2))
    return batch


@pytest.mark.parametrize("architecture", ["llama", "phi", "gpt2"])
def test_landmark_vector_sits_exactly_at_the_placeholder(architecture):
    model = build(architecture)
    batch = prompt_batch(model)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == 3  # left-padded prompts of different lengths
    embeds = model.embed(batch["input_ids"], batch["points"])
    projected = model.projector(model.encoder(batch["points"]))
    table = model.llm.get_input_embeddings().weight
    offsets = set()
    for row in range(3):
        at = (batch["input_ids"][row] == model.landmark_id).nonzero().item()
        offsets.add(at - (batch["input_ids"].shape[1] - int(lengths[row])))  # from the first real token
        assert torch.equal(embeds[row, at], projected[row, 0])
        others = [p for p in range(embeds.shape[1]) if p != at]
        assert torch.equal(embeds[row, others], table[batch["input_ids"][row, others]])
    assert len(offsets) == 1 and offsets.pop() > 1  # same place in every row, after [BOS] + system prompt
    # left padding is invisible: each row gives the logits it gives alone, unpadded
    logits = model(batch["input_ids"], batch["attention_mask"], batch["points"]).logits
    for row in range(3):
        n = int(lengths[row])
        alone = model(batch["input_ids"][row:row + 1, -n:], batch["attention_mask"][row:row + 1, -n:],
                      batch["points"][row:row + 1]).logits
        torch.testing.assert_close(logits[row, -n:], alone[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("architecture", ["llama", "phi", "gpt2"])
def test_answer_only_head_equals_full_vocabulary_loss(architecture):
    model = build(architecture)
    batch = train_batch(model)
    loss = model(batch["input_ids"], batch["attention_mask"], batch["points"], batch["labels"]).loss
    model.config.answer_only_head = False
    full = model(batch["input_ids"], batch["attention_mask"], batch["points"], batch["labels"]).loss
    logits = model(batch["input_ids"], batch["attention_mask"], batch["points"]).logits
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    by_hand = torch.nn.functional.cross_entropy(logits[:, :-1][keep], targets[keep])
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-6)
    assert 3 < loss.item() < 10  # random tiny LM over ~400 tokens: about log(660)


def test_placeholder_count_is_checked():
    model = build()
    batch = prompt_batch(model)
    ids = batch["input_ids"].clone()
    ids[ids == model.landmark_id] = model.tokenizer.eos_token_id
    with pytest.raises(FacePhiError, match="exactly one"):
        model.embed(ids, batch["points"])
    ids = batch["input_ids"].clone()
    ids[0, -1] = model.landmark_id
    with pytest.raises(FacePhiError, match=r"counts \[2, 1, 1\]"):
        model.embed(ids, batch["points"])


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if k in before and not torch.equal(v, before[k])}


def optimise(model: FacePhiModel, steps: int = 2) -> None:
    batch = train_batch(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(batch["input_ids"], batch["attention_mask"], batch["points"], batch["labels"]).loss.backward()
        optimizer.step()
    model.eval()


def test_stage_1_trains_only_the_projector():
    model = build()
    model.set_trainable(1)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"projector"}
    llm, encoder, projector = snapshot(model.llm), snapshot(model.encoder), snapshot(model.projector)
    optimise(model)
    assert not changed(llm, model.llm) and not changed(encoder, model.encoder)  # BatchNorm stats included
    assert changed(projector, model.projector) == set(projector)
    assert model.config.llm_weights == "base"


def test_stage_2_full_trains_the_llm_not_the_encoder():
    model = build()
    model.set_trainable(2)
    encoder, llm = snapshot(model.encoder), snapshot(model.llm)
    optimise(model)
    assert not changed(encoder, model.encoder)
    assert "model.layers.0.self_attn.q_proj.weight" in changed(llm, model.llm)
    assert model.config.llm_weights == "full"


def test_stage_2_lora_trains_only_adapters():
    model = build()
    model.set_trainable(2, lora=True, lora_config={"r": 4})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projector.") or "lora_" in n for n in trainable)
    assert any("lora_" in n for n in trainable)
    llm = snapshot(model.llm)
    optimise(model)
    assert {k for k in changed(llm, model.llm)} and all("lora_" in k for k in changed(llm, model.llm))
    with pytest.raises(FacePhiError, match="LoRA"):
        model.set_trainable(2)


def test_bad_stage():
    with pytest.raises(FacePhiError, match="stage must be 1 or 2"):
        build().set_trainable(3)


def test_batched_generation_equals_one_by_one():
    model = build("gpt2")
    batch = prompt_batch(model)
    together = model.generate(batch["input_ids"], batch["attention_mask"], batch["points"], max_new_tokens=6)
    for row in range(3):
        n = int(batch["attention_mask"][row].sum())
        alone = model.generate(batch["input_ids"][row:row + 1, -n:], batch["attention_mask"][row:row + 1, -n:],
                               batch["points"][row:row + 1], max_new_tokens=6)
        assert alone == [together[row]]
    assert all(isinstance(text, str) for text in together)


@pytest.mark.parametrize("mode", ["full", "lora", "reference"])
def test_save_load_round_trip_gives_identical_generations(tmp_path, mode):
    model = build("llama")
    if mode != "full":  # the base LLM is referenced by its path
        base_dir = tmp_path / "base"
        tiny_llm("llama", tiny_tokenizer("llama")).save_pretrained(base_dir)
        tiny_tokenizer("llama").save_pretrained(base_dir)
        model.config.llm = str(base_dir)
    if mode == "reference":  # only the projector was trained
        model.set_trainable(1)
    else:
        model.set_trainable(2, lora=mode == "lora", lora_config={"r": 4})
    optimise(model)
    model.save_pretrained(tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert files >= {"config.json", "encoder", "projector.safetensors", "tokenizer"}
    assert ("llm" in files) == (mode == "full") and ("adapter" in files) == (mode == "lora")
    assert not list((tmp_path / "model").rglob("*.bin")) and not list((tmp_path / "model").rglob("*.pt"))
    loaded = FacePhiModel.from_pretrained(tmp_path / "model", encoder_loader=TinyEncoder.from_pretrained)
    batch = prompt_batch(model)
    expected = model.generate(batch["input_ids"], batch["attention_mask"], batch["points"], max_new_tokens=8)
    assert loaded.generate(batch["input_ids"], batch["attention_mask"], batch["points"], max_new_tokens=8) == expected
    reference = model(batch["input_ids"], batch["attention_mask"], batch["points"]).logits
    assert torch.equal(loaded(batch["input_ids"], batch["attention_mask"], batch["points"]).logits, reference)
    assert loaded.config.llm_weights == model.config.llm_weights
    model.save_pretrained(tmp_path / "model")  # overwriting an existing folder works


def test_fine_tuned_llm_cannot_be_saved_as_a_reference(tmp_path):
    model = build()
    model.set_trainable(2)
    with pytest.raises(FacePhiError, match="fine-tuned"):
        model.save_pretrained(tmp_path / "model", save_llm=False)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FacePhiError, match="config.json: missing"):
        FacePhiModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"config_type": "facephi-landmark-encoder"}')
    with pytest.raises(FacePhiError, match="config_type"):
        FacePhiModel.from_pretrained(tmp_path)
