"""Template-drafted greedy decoding (``model/decoding.py``), the answering fast path: the same answers
as ``generate`` and the same class probabilities as the plain scoring, on tiny random Llama / Phi /
GPT-2 models, K = 1 and K = 4 landmark tokens, batches of different prompt lengths; drafts that are
accepted, accepted in part or not at all; a LoRA adapter merged into a copy for answering."""

from __future__ import annotations

import pytest
import torch
from test_facephi_model import build
from test_landmark_tokens import build_k

from facephi.data.templates import INSTRUCTIONS
from facephi.labels import CLASSES
from facephi.model.decoding import AnswerTrie, plain_greedy
from facephi.train.stages import set_train_mode

ARCHITECTURES = ("llama", "phi", "gpt2")
ASKED = [INSTRUCTIONS[i] for i in (1, 0, 7)]  # prompts of different lengths (left padding in `generate`)
NEW_TOKENS = 10


def faces(n: int = 3, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 478, 3, generator=torch.Generator().manual_seed(seed))


def model_of(architecture: str, k: int):
    model = build(architecture) if k == 1 else build_k(k, architecture)
    model.fast_path = True
    return model


def plain_answers(model, points, instructions, new_tokens=NEW_TOKENS) -> list[str]:
    batch = model.formatter.pad_prompts([model.formatter.encode_prompt(text) for text in instructions])
    return model.generate(batch["input_ids"], batch["attention_mask"], points, max_new_tokens=new_tokens)


def greedy_tokens(model, points, instructions, new_tokens=NEW_TOKENS) -> list[list[int]]:
    """Each answer's tokens, decided one per pass (an empty trie drafts nothing)."""
    decoder = model.decoder()
    trie, decoder.trie = decoder.trie, AnswerTrie([], len(CLASSES))
    try:
        prompts = [model.formatter.encode_prompt(text) for text in instructions]
        with model._answering():
            tokens, _ = decoder.decode(model.answering_prefix(), points, prompts, new_tokens)
    finally:
        decoder.trie = trie
    assert decoder.passes == max(len(t) + (len(t) < new_tokens) for t in tokens)  # one token per pass
    return tokens


def greedy_trie(model, points, wrong_turns: bool = False) -> list[list[int]]:
    """Make the decoder's trie hold the greedy answers (with ``wrong_turns``: each also with its 4th
    token changed, so drafts are accepted in part); returns the greedy tokens."""
    tokens = greedy_tokens(model, points, ASKED)
    wrong = [seq[:3] + [seq[3] + 1] + seq[4:] for seq in tokens] if wrong_turns else []
    model.decoder().trie = AnswerTrie([(seq, b % len(CLASSES)) for b, seq in enumerate(tokens + wrong)], len(CLASSES))
    return tokens


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_answers_equal_generate_token_by_token_and_with_accepted_drafts(architecture, k):
    model = model_of(architecture, k)
    points = faces()
    reference = plain_answers(model, points, ASKED)
    assert model.answer(points, ASKED, NEW_TOKENS) == reference  # off the trained answers: token by token
    tokens = greedy_trie(model, points, wrong_turns=True)  # drafts accepted in whole or in part
    assert [text.strip() for text in model.tokenizer.batch_decode(tokens, skip_special_tokens=True)] == reference
    assert model.answer(points, ASKED, NEW_TOKENS) == reference
    assert model.decoder().passes < NEW_TOKENS // 2  # verified in few passes
    for row in range(3):  # one face alone answers as in the batch
        assert model.answer(points[row:row + 1], ASKED[row:row + 1], NEW_TOKENS) == reference[row:row + 1]
    # fewer new tokens than the drafts hold: cut as generate cuts
    assert model.answer(points, ASKED, 4) == plain_answers(model, points, ASKED, 4)


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_answer_and_probabilities_share_one_pass_and_equal_the_plain_paths(architecture, k):
    model = model_of(architecture, k)
    points = faces()
    greedy_trie(model, points)
    answers, probabilities = model.answer_and_probabilities(points, ASKED, NEW_TOKENS)
    passes = model.decoder().passes
    model.fast_path = False
    assert answers == plain_answers(model, points, ASKED)
    plain = model.class_probabilities(points, ASKED)
    torch.testing.assert_close(probabilities, plain, rtol=0, atol=1e-5)
    assert passes < NEW_TOKENS // 2
    plain_all = model.class_probabilities(points, ASKED, templates="all")
    model.fast_path = True
    _, probabilities_all = model.answer_and_probabilities(points, ASKED, NEW_TOKENS, templates="all")
    torch.testing.assert_close(probabilities_all, plain_all, rtol=0, atol=1e-5)
    # the plain path of answer_and_probabilities (fast_path off) gives the same pair
    model.fast_path = False
    plain_pair = model.answer_and_probabilities(points, ASKED, NEW_TOKENS)
    assert plain_pair[0] == answers
    torch.testing.assert_close(plain_pair[1], plain, rtol=0, atol=1e-6)


def test_the_first_pass_alone_answers_when_the_scored_answer_is_greedy():
    """The scoring pass drafts the class answers of template 0: an answer among them needs no other pass."""
    model = model_of("llama", 1)
    points = faces(1)
    tokens = greedy_tokens(model, points, ASKED[:1], new_tokens=6)[0]
    model.scorer.answers = lambda templates="first": [[tokens + [model.tokenizer.eos_token_id]] * len(CLASSES)]
    model.decoder().trie = AnswerTrie([(tokens, 0)], len(CLASSES))
    answers, _ = model.answer_and_probabilities(points, ASKED[:1], 6)
    assert answers == plain_answers(model, points, ASKED[:1], 6) and model.decoder().passes == 1


def test_prompts_cut_by_max_length_or_other_generation_settings_take_generate():
    model = model_of("llama", 1)
    points = faces()
    model.formatter.max_length = len(model.formatter.encode_prompt(ASKED[0])) - 2
    assert model.answer(points, ASKED, NEW_TOKENS) == plain_answers(model, points, ASKED)
    model = model_of("gpt2", 1)
    assert plain_greedy(model.llm)
    model.llm.generation_config.repetition_penalty = 1.5
    assert not plain_greedy(model.llm)
    assert model.answer(points, ASKED, NEW_TOKENS) == plain_answers(model, points, ASKED)


def test_drafts_are_best_first_within_budget_and_depth():
    trie = AnswerTrie([([1, 2, 3], 0), ([1, 2, 4], 1), ([1, 5], 1), ([6], 2)], 3)
    # weight = answers through a node; ties in the order met
    assert trie.draft(0, 10, 10, [1.0, 1.0, 1.0]) == [(1, -1, 1), (2, 0, 2), (6, -1, 1), (5, 0, 2), (3, 1, 3),
                                                       (4, 1, 3)]
    assert trie.draft(0, 3, 10, [0.0, 1.0, 0.0]) == [(1, -1, 1), (2, 0, 2), (5, 0, 2)]  # class 1's answers first
    assert trie.draft(0, 10, 1, [1.0, 1.0, 1.0]) == [(1, -1, 1), (6, -1, 1)]
    assert trie.draft(None, 10, 10, [1.0] * 3) == [] and trie.step(trie.step(0, 1), 9) is None
    trie.record([1, 5])
    trie.record([1, 5, 7])  # off the trie after 5: counted up to there
    assert trie.draft(0, 2, 10, [1.0, 1.0, 1.0]) == [(1, -1, 1), (5, 0, 2)]  # the decoded answers' path first
    assert trie.hits[trie.step(trie.step(0, 1), 5)] == 2


def test_answers_off_the_trie_are_drafted_from_the_longest_suffix_the_trained_sentences_hold():
    trie = AnswerTrie([([1, 2, 3, 4], 0), ([5, 2, 3, 6], 1), ([7, 3, 8], 2)], 3)
    assert trie.draft_after(None, [9, 2, 3], 10, 10, [1.0] * 3) == [(4, -1, 1), (6, -1, 1)]  # [2, 3], not [3]
    assert trie.draft_after(None, [9, 2, 3], 10, 10, [0.0, 1.0, 0.0]) == [(6, -1, 1), (4, -1, 1)]
    assert trie.draft_after(None, [9, 3], 10, 10, [1.0] * 3) == [(4, -1, 1), (6, -1, 1), (8, -1, 1)]
    assert trie.draft_after(None, [9, 1], 10, 2, [1.0] * 3) == [(2, -1, 1), (3, 0, 2)]  # depth 2
    assert trie.draft_after(None, [9], 10, 10, [1.0] * 3) == [] and trie.draft_after(None, [4], 10, 10, [1.0] * 3) == []
    assert trie.draft_after(0, [], 1, 10, [1.0] * 3) == trie.draft(0, 1, 10, [1.0] * 3)  # on the trie: as before


def test_an_answer_that_leaves_the_trie_takes_few_passes_and_stays_greedy():
    """The trie's one sentence starts elsewhere and holds the greedy answer from its third token on:
    three tokens one by one, then the rest drafted from the sentence in one pass."""
    model = model_of("llama", 1)
    points = faces(1)
    tokens = greedy_tokens(model, points, ASKED[:1])[0]
    assert len(tokens) >= 6
    model.decoder().trie = AnswerTrie([([t + 1 for t in tokens[:3]] + tokens[2:], 0)], len(CLASSES))
    assert model.answer(points, ASKED[:1], NEW_TOKENS) == plain_answers(model, points, ASKED[:1])
    assert model.decoder().passes <= 5 < len(tokens)


def test_generate_and_answer_leave_a_frozen_llm_in_eval_mode():
    """Mid-training (stage 1: projector in train mode, the frozen LLM in eval mode) answering gives
    each module its own mode back; it used to switch the whole model, the LLM too, to train mode."""
    model = model_of("gpt2", 1)  # GPT-2 has dropout: a train-mode LLM would answer at random
    model.set_trainable(1)
    set_train_mode(model)
    points = faces()
    for fast in (False, True):
        model.fast_path = fast
        plain_answers(model, points, ASKED)
        model.answer(points, ASKED, 3)
        model.class_probabilities(points, ASKED)
        assert model.projector.training and not model.llm.training
        assert not any(module.training for module in model.llm.modules())


def test_a_lora_adapter_is_merged_into_a_copy_for_answering_and_kept_for_training():
    model = model_of("llama", 1)
    model.set_trainable(2, lora=True, lora_config={"lora_dropout": 0.0})
    with torch.no_grad():
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(3))
    assert model.answering_prefix() is model.prefix  # trainable: the adapter itself
    model.requires_grad_(False)
    adapter = model.lora_state_dict()
    points = faces()
    with torch.inference_mode():  # made on first use, here inside inference mode (as in Predictor)
        model.answer(points, ASKED, 2)
    merged = model.answering_prefix()
    assert merged is not model.prefix and not any("lora_" in n for n, _ in merged.llm.named_parameters())
    assert model.answering_prefix() is merged  # made once
    fast_answers, fast_probs = model.answer_and_probabilities(points, ASKED, NEW_TOKENS)
    model.fast_path = False
    assert fast_answers == plain_answers(model, points, ASKED)
    torch.testing.assert_close(fast_probs, model.class_probabilities(points, ASKED), rtol=0, atol=1e-4)
    model.fast_path = True
    assert model.has_lora and model.lora_state_dict().keys() == adapter.keys()  # training keeps the adapter
    with torch.no_grad():  # the adapter changed: a new merged copy
        next(p for n, p in model.llm.named_parameters() if "lora_B" in n).add_(0.5)
    assert model.answering_prefix() is not merged


def test_int8_answers_through_a_quantised_copy_with_exact_drafting():
    model = model_of("llama", 1).requires_grad_(False)
    points = faces()
    float32 = model.class_probabilities(points, ASKED)
    assert model.set_precision("int8") == "int8"
    with torch.inference_mode():  # the copy is made on first use, here inside inference mode (as in Predictor)
        model.answer_and_probabilities(points, ASKED, 2)
    prefix = model.answering_prefix()
    linear = [type(m).__module__ for m in prefix.llm.modules() if type(m).__name__ == "Linear"]
    assert len(linear) == 15 and all(name.startswith("torch.ao.nn.quantized.dynamic") for name in linear)  # + head
    assert all(p.dtype == torch.float32 for p in model.llm.parameters())  # the model's own LLM stays float32
    int8 = model.class_probabilities(points, ASKED)
    assert not torch.equal(int8, float32) and float((int8 - float32).abs().max()) < 0.05
    tokens = greedy_trie(model, points)  # int8 greedy, one token per pass
    reference = [text.strip() for text in model.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    answers, probabilities = model.answer_and_probabilities(points, ASKED, NEW_TOKENS)
    assert answers == reference and model.decoder().passes < NEW_TOKENS // 2
    torch.testing.assert_close(probabilities, int8, rtol=0, atol=1e-5)
    assert model.set_precision("float32") == "float32" and model.answering_prefix() is model.prefix

