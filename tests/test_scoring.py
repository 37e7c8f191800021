"""Class scoring (rank classification): cached likelihoods equal the naive computation, probabilities,
prior adjustment, and the ``score`` / ``both`` evaluation modes."""

import json
import math

import numpy as np
import pytest
import torch
from test_facephi_model import build
from train_fixtures import PointsDataset, write_encoder, write_landmark_set

import facephi.model.class_scoring as class_scoring
from facephi.data.instruction import IGNORE_INDEX
from facephi.data.templates import ANSWER_TEMPLATES, INSTRUCTIONS
from facephi.eval.evaluate import EvalResult, evaluate_model, read_prior
from facephi.labels import CLASSES, display_name
from facephi.utils.errors import FacePhiError

K = len(CLASSES)


def faces(n: int = 3, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 478, 3, generator=torch.Generator().manual_seed(seed))


def asked(instructions=(1, 0, 7)) -> list[str]:
    return [INSTRUCTIONS[i] for i in instructions]  # prompts of different lengths (left padding)


def naive_log_likelihoods(model, points, instructions, templates) -> torch.Tensor:
    """For each class: the full training sequence (``encode_train``), one plain forward, the summed
    log-probabilities of its label tokens; then the mean over templates in probability space."""
    scores = torch.zeros(len(instructions), len(templates), K)
    with torch.inference_mode():
        for b, text in enumerate(instructions):
            for t, template in enumerate(templates):
                items = [model.formatter.encode_train(text, template.format(emotion=display_name(name)))
                         for name in CLASSES]
                batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
                logits = model(batch["input_ids"], batch["attention_mask"], points[b:b + 1].expand(K, -1, -1)).logits
                targets = batch["labels"][:, 1:]
                log_probs = logits[:, :-1].float().log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
                scores[b, t] = (log_probs * (targets != IGNORE_INDEX)).sum(1)
    return torch.logsumexp(scores, dim=1) - math.log(len(templates))


@pytest.mark.parametrize("templates", ["first", "all"])
@pytest.mark.parametrize("architecture", ["llama", "phi", "gpt2"])
def test_cached_scores_equal_the_naive_computation(architecture, templates):
    model = build(architecture)
    points, instructions = faces(), asked()
    lengths = model.formatter.pad_prompts([model.formatter.encode_prompt(t) for t in instructions])["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == 3
    scores = model.class_log_likelihoods(points, instructions, templates=templates)
    chosen = ANSWER_TEMPLATES[:1] if templates == "first" else ANSWER_TEMPLATES
    naive = naive_log_likelihoods(model, points, instructions, chosen)
    assert scores.shape == (3, K) and scores.dtype == torch.float32 and not scores.requires_grad
    torch.testing.assert_close(scores, naive, rtol=1e-5, atol=1e-4)
    assert (scores < 0).all()
    # one face alone scores as in the batch
    torch.testing.assert_close(model.class_log_likelihoods(points[1:2], instructions[1:2], templates), scores[1:2],
                               rtol=1e-5, atol=1e-4)


def test_template_groups_full_vocabulary_head_and_lora_give_the_same_scores(monkeypatch):
    model = build("llama")
    points, instructions = faces(), asked()
    reference = model.class_log_likelihoods(points, instructions, "all")
    monkeypatch.setattr(class_scoring, "SCORE_ROWS", 1)  # one template per pass: the prompt cache is copied
    torch.testing.assert_close(model.class_log_likelihoods(points, instructions, "all"), reference)
    monkeypatch.undo()
    model.config.answer_only_head = False  # logits from the LLM's own forward
    torch.testing.assert_close(model.class_log_likelihoods(points, instructions, "all"), reference,
                               rtol=1e-5, atol=1e-4)
    model.config.answer_only_head = True
    model.set_trainable(2, lora=True)
    with torch.no_grad():
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(3))
    model.train()
    scores = model.class_log_likelihoods(points, instructions, "first")
    assert model.training and model.llm.training  # the mode is given back
    assert not torch.allclose(scores, reference)  # the adapter is used ...
    torch.testing.assert_close(scores, naive_log_likelihoods(model.eval(), points, instructions, ANSWER_TEMPLATES[:1]),
                               rtol=1e-5, atol=1e-4)  # ... and the cache path matches the plain forward


def test_probabilities_and_prior_adjustment():
    model = build("phi")
    points, instructions = faces(), asked()
    scores = model.class_log_likelihoods(points, instructions)
    probs = model.class_probabilities(points, instructions)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    torch.testing.assert_close(probs, scores.softmax(-1))
    prior = torch.tensor([0.4, 0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.1])
    adjusted = model.class_probabilities(points, instructions, prior=prior)
    expected = probs / prior
    torch.testing.assert_close(adjusted, expected / expected.sum(-1, keepdim=True))  # p / prior, renormalised
    torch.testing.assert_close(adjusted, (scores - prior.log()).softmax(-1))
    # the over-represented class loses probability, a rare one gains
    assert (adjusted[:, 0] < probs[:, 0]).all() and (adjusted[:, 1] > probs[:, 1]).all()
    torch.testing.assert_close(model.class_probabilities(points, instructions, prior=[2.0] * K), probs)
    with pytest.raises(FacePhiError, match="prior"):
        model.class_probabilities(points, instructions, prior=[0.0] * K)
    with pytest.raises(FacePhiError, match="templates"):
        model.class_log_likelihoods(points, instructions, templates="mean")
    with pytest.raises(FacePhiError, match="instructions"):
        model.class_log_likelihoods(points, instructions[:2])


def test_a_trained_preference_ranks_first():
    model = build("llama")
    points, instruction = faces(1, seed=5), INSTRUCTIONS[3]
    before = model.class_probabilities(points, [instruction], templates="all")[0]
    target = CLASSES.index("surprise")
    item = model.formatter.encode_train(instruction, ANSWER_TEMPLATES[0].format(emotion=display_name("surprise")))
    batch = {key: value[None] for key, value in item.items()}
    model.set_trainable(2)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        model(batch["input_ids"], batch["attention_mask"], points, batch["labels"]).loss.backward()
        optimizer.step()
    for templates in ("first", "all"):
        after = model.class_probabilities(points, [instruction], templates=templates)[0]
        assert int(after.argmax()) == target and after[target] > 0.5
    assert before[target] < 0.5


# ---------------------------------------------------------------------------------------------- evaluation
class ScriptedScorer(torch.nn.Module):
    """``answer`` names the true class on even indices; the scores favour the true class except on
    every third index, where class 0 wins (so a prior on class 0 changes predictions)."""

    def __init__(self, fail_after=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.fail_after, self.calls = fail_after, []

    def answer(self, points, instructions, max_new_tokens):
        return [f"It is {CLASSES[int(p[0, 0])] if int(p[0, 1]) % 2 == 0 else 'unclear'}." for p in points]

    def class_log_likelihoods(self, points, instructions, templates="first"):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append([int(p[0, 1]) for p in points])
        scores = torch.full((len(points), K), -20.0)
        for row, p in enumerate(points):
            label, index = int(p[0, 0]), int(p[0, 1])
            scores[row, label] = -10.0 + 0.1 * (index % 5)
            scores[row, 0] = max(scores[row, 0].item(), -8.0 if index % 3 == 0 else -12.0)
        return scores


def test_score_mode_records_metrics_and_files(tmp_path):
    result = evaluate_model(ScriptedScorer(), PointsDataset(), batch_size=4, out_dir=tmp_path, progress=False,
                            mode="score")
    record = result.records[0]
    assert set(record["scores"]) == set(CLASSES) and record["scores"] == pytest.approx(record["scores"])
    assert sum(record["scores"].values()) == pytest.approx(1.0)
    assert "answer" not in record and record["predicted"] == record["scored_class"]
    expected = [0 if r["index"] % 3 == 0 else r["true_index"] for r in result.records]
    assert [CLASSES.index(r["scored_class"]) for r in result.records] == expected
    assert result.metrics.accuracy == pytest.approx(np.mean([e == r["true_index"] for e, r in zip(expected, result.records)]))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["accuracy"] == result.metrics.accuracy and saved["score"]["accuracy"] == result.metrics.accuracy
    calibration = saved["score"]["calibration"]
    assert calibration["bins"] == 15 and calibration["ece"] >= 0 and calibration["nll"] > 0
    assert saved["settings"]["mode"] == "score" and "max_new_tokens" not in saved["settings"]
    assert (tmp_path / "reliability.png").stat().st_size > 1000 and "## Class scoring" in (tmp_path / "report.md").read_text()
    loaded = EvalResult.load(tmp_path)
    assert loaded.metrics == result.metrics and loaded.extra == json.loads(json.dumps(result.extra))
    probabilities = loaded.class_probabilities()
    assert probabilities.shape == (10, len(CLASSES)) and np.allclose(probabilities.sum(axis=1), 1)
    assert probabilities.argmax(axis=1).tolist() == expected and loaded.answered() is None  # nothing generated
    assert loaded.truth().tolist() == [r["true_index"] for r in result.records]


def test_both_mode_keeps_the_generate_metrics_and_adds_agreement(tmp_path):
    generated = evaluate_model(ScriptedScorer(), PointsDataset(), batch_size=4, out_dir=tmp_path / "g", progress=False)
    both = evaluate_model(ScriptedScorer(), PointsDataset(), batch_size=4, out_dir=tmp_path / "b", progress=False,
                          mode="both")
    assert both.metrics == generated.metrics and generated.extra == {}
    assert not (tmp_path / "g" / "reliability.png").exists()
    assert "mode" not in json.loads((tmp_path / "g" / "metrics.json").read_text())["settings"]  # as before
    for plain, scored in zip(generated.records, both.records):
        assert {k: scored[k] for k in plain} == plain and "scored_class" in scored
    agree = [r["predicted"] == r["scored_class"] for r in both.records]
    assert both.extra["agreement"] == pytest.approx(np.mean(agree)) and 0 < both.extra["agreement"] < 1
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert saved["accuracy"] == generated.metrics.accuracy and saved["agreement"] == both.extra["agreement"]
    assert saved["score"]["n"] == 10
    loaded = EvalResult.load(tmp_path / "b")
    assert loaded.answered().tolist() == [r["predicted_index"] for r in generated.records]
    assert loaded.class_probabilities().argmax(axis=1).tolist() == [CLASSES.index(r["scored_class"]) for r in both.records]


def test_prior_correction_from_a_valid_score_folder(tmp_path):
    valid = evaluate_model(ScriptedScorer(), PointsDataset(), "valid", batch_size=4, out_dir=tmp_path / "valid",
                           progress=False, mode="score")
    prior, source = read_prior(tmp_path / "valid", "first")
    probs = np.array([[r["scores"][c] for c in CLASSES] for r in valid.records])
    np.testing.assert_allclose(prior, probs.mean(axis=0))
    assert source["n_samples"] == 10 and prior.argmax() == 0  # class 0 over-predicted
    result = evaluate_model(ScriptedScorer(), PointsDataset(), "test", batch_size=4, out_dir=tmp_path / "test",
                            progress=False, mode="score", prior=tmp_path / "valid")
    corrected = result.extra["score_prior_corrected"]
    assert result.extra["score"]["accuracy"] == result.metrics.accuracy  # uncorrected block stays
    assert corrected["accuracy"] > result.extra["score"]["accuracy"]
    adjusted = probs / prior
    assert [r["scored_class_prior_corrected"] for r in result.records] == [CLASSES[k] for k in adjusted.argmax(1)]
    assert result.settings["prior"] == pytest.approx(prior.tolist())
    assert (tmp_path / "test" / "reliability_prior_corrected.png").is_file()
    with pytest.raises(FacePhiError, match="valid split"):
        read_prior(tmp_path / "test")
    with pytest.raises(FacePhiError, match="score-templates"):
        read_prior(tmp_path / "valid", "all")
    with pytest.raises(FacePhiError, match="class scoring"):
        evaluate_model(ScriptedScorer(), PointsDataset(), prior=[1.0] * K, progress=False)


def test_score_mode_resumes_and_restarts_on_changed_settings(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(ScriptedScorer(fail_after=2), PointsDataset(), batch_size=4, out_dir=tmp_path,
                       progress=False, mode="score")
    assert len((tmp_path / "predictions.partial.jsonl").read_text().splitlines()) == 8
    model = ScriptedScorer()
    resumed = evaluate_model(model, PointsDataset(), batch_size=4, out_dir=tmp_path, progress=False, mode="score")
    assert model.calls == [[108, 109]] and len(resumed.records) == 10
    fresh = evaluate_model(ScriptedScorer(), PointsDataset(), batch_size=4, progress=False, mode="score")
    assert resumed.records == fresh.records and resumed.extra == fresh.extra
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(ScriptedScorer(fail_after=1), PointsDataset(), batch_size=4, out_dir=tmp_path / "x",
                       progress=False, mode="score")
    model = ScriptedScorer()
    evaluate_model(model, PointsDataset(), batch_size=4, out_dir=tmp_path / "x", progress=False, mode="score",
                   score_templates="all")
    assert len(model.calls) == 3  # other settings: started over


def test_eval_cli_score_and_both_with_prior_on_a_tiny_checkpoint(tmp_path, capsys):
    from facephi.cli import main
    from facephi.model.encoder import LandmarkEncoder
    from facephi.model.facephi import FacePhiConfig, FacePhiModel
    from facephi.model.projector import ProjectorConfig
    from tiny_models import tiny_llm, tiny_tokenizer

    data = write_landmark_set(tmp_path / "data", {"train": 2, "valid": 4, "test": 4})
    encoder = LandmarkEncoder.from_pretrained(write_encoder(tmp_path / "encoder"))
    tokenizer = tiny_tokenizer("smollm")
    config = FacePhiConfig(llm="tiny-llama", max_length=96, projector=ProjectorConfig(input_dim=encoder.feature_dim))
    FacePhiModel(config, encoder, tiny_llm("llama", tokenizer), tokenizer).save_pretrained(tmp_path / "m", save_llm=True)
    common = ["--model", str(tmp_path / "m"), "--data", str(data), "--batch-size", "3", "--max-new-tokens", "3",
              "--no-progress", "--device", "cpu", "--threads", "1"]
    assert main(["eval", *common, "--split", "valid", "--mode", "score", "--out", str(tmp_path / "valid")]) == 0
    assert main(["eval", *common, "--mode", "both", "--prior", str(tmp_path / "valid"),
                 "--out", str(tmp_path / "test")]) == 0
    out = capsys.readouterr().out
    assert "Class scoring, valid scores prior divided out (tau 1.0)" in out and "Agreement" in out
    saved = json.loads((tmp_path / "test" / "metrics.json").read_text())
    score = saved["score"]
    assert (f"Class scoring: accuracy {100 * score['accuracy']:.1f} %, macro recall "
            f"{100 * score['balanced_accuracy']:.1f} %, macro-F1 {100 * score['macro_f1']:.1f} %, ECE ") in out
    assert {"score", "score_prior_corrected", "agreement", "accuracy_contains"} <= set(saved)
    assert saved["settings"]["prior_source"]["from"] == str(tmp_path / "valid")
    # the recorded probabilities are the model's own, for each sample's recorded instruction
    model = FacePhiModel.from_pretrained(tmp_path / "m")
    records = [json.loads(line) for line in (tmp_path / "test" / "predictions.jsonl").read_text().splitlines()]
    from facephi.data.dataset import LandmarkDataset
    from facephi.landmarks.store import LandmarkSet

    landmarks = LandmarkSet.load(data)
    dataset = LandmarkDataset(landmarks, np.array([r["index"] for r in records]), model.encoder.normalizer)
    points = torch.stack([torch.as_tensor(dataset[k]["points"]) for k in range(len(records))])
    probs = model.class_probabilities(points, [r["instruction"] for r in records])
    recorded = torch.tensor([[r["scores"][c] for c in CLASSES] for r in records], dtype=torch.float32)
    torch.testing.assert_close(recorded, probs, rtol=1e-4, atol=1e-5)
    assert main(["eval", *common, "--prior", str(tmp_path / "valid"), "--out", str(tmp_path / "bad")]) == 2  # generate
