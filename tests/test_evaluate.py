"""End-to-end evaluation: batching with left padding, keyword scoring, output files, resumption."""

import json

import numpy as np
import pytest
import torch

from facephi.data.templates import INSTRUCTIONS
from facephi.eval.evaluate import EvalResult, choose_instruction, evaluate_encoder, evaluate_model
from facephi.labels import CLASSES
from facephi.scoring.keywords import match_answer
from facephi.scoring.metrics import MISS
from tiny_models import tiny_tokenizer
from train_fixtures import PointsDataset

N = 10


def scripted_answer(label: int, index: int) -> str:
    """index % 4: 0 -> correct, 1 -> no keyword, 2 -> two classes (true one second), 3 -> wrong."""
    true, other = CLASSES[label], CLASSES[(label + 1) % len(CLASSES)]
    return [f"The emotion of {true.upper()}.", "I cannot tell.",
            f"Either {other} or {true}.", f"Clearly {other}."][index % 4]


class ScriptedModel(torch.nn.Module):
    """Same interface as ``FacePhiModel.answer``; records what it is asked (sample index, instruction)."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.fail_after, self.calls, self.asked = fail_after, [], []

    def answer(self, points, instructions, max_new_tokens):
        assert len(instructions) == len(points) and max_new_tokens > 0
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append([int(p[0, 1]) for p in points])
        self.asked += [(int(p[0, 1]), text) for p, text in zip(points, instructions)]
        return [scripted_answer(int(p[0, 0]), int(p[0, 1])) for p in points]


def test_scores_and_files(tmp_path):
    model = ScriptedModel()
    result = evaluate_model(model, PointsDataset(), batch_size=4, out_dir=tmp_path, progress=False)
    # indices 100..109: index % 4 == 0 correct (100, 104, 108), == 2 ambiguous (102, 106)
    m = result.metrics
    assert m.n == N and m.accuracy == pytest.approx(3 / N)
    assert m.accuracy_contains == pytest.approx(5 / N)
    assert m.miss_rate == pytest.approx(3 / N)           # 101, 105, 109
    assert m.ambiguous_rate == pytest.approx(2 / N)
    assert [len(c) for c in model.calls] == [4, 4, 2]

    lines = [json.loads(s) for s in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in lines] == list(range(100, 110))
    for r in lines:  # what keyword matching must make of each kind of scripted answer
        label = (r["index"] - 100) % len(CLASSES)
        true, other = CLASSES[label], CLASSES[(label + 1) % len(CLASSES)]
        predicted, correct, contains, ambiguous, mentioned = [
            (true, True, True, False, [true]), (None, False, False, False, []),
            (other, False, True, True, [other, true]), (other, False, False, False, [other])][r["index"] % 4]
        assert (r["true"], r["true_index"]) == (true, label)
        assert (r["predicted"], r["correct"], r["correct_contains"]) == (predicted, correct, contains)
        assert (r["ambiguous"], r["mentioned"]) == (ambiguous, mentioned)
        assert r["predicted_index"] == (MISS if predicted is None else CLASSES.index(predicted))
    assert model.asked == [(r["index"], r["instruction"]) for r in lines]  # recorded = asked
    assert all(r["instruction"] == choose_instruction(r["index"], "random", 0) for r in lines)
    assert all(r["instruction"] in INSTRUCTIONS for r in lines)

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["accuracy"] == pytest.approx(0.3) and saved["settings"]["batch_size"] == 4
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "| Accuracy | 30.0 % (95 % CI " in (tmp_path / "report.md").read_text()
    low, high = saved["intervals"]["accuracy"]
    assert 0 <= low < 0.3 < high <= 1 and saved["intervals"]["resamples"] == 1000
    assert not (tmp_path / "predictions.partial.jsonl").exists()
    loaded = EvalResult.load(tmp_path)
    assert loaded.metrics == m and loaded.records == result.records
    assert loaded.truth().tolist() == [r["true_index"] for r in lines]
    assert loaded.answered().tolist() == [r["predicted_index"] for r in lines]  # misses stay -1
    assert loaded.class_probabilities() is None  # generated, not scored


def test_results_do_not_depend_on_batch_size_and_instructions_are_seeded():
    a = evaluate_model(ScriptedModel(), PointsDataset(), batch_size=3, progress=False)
    b = evaluate_model(ScriptedModel(), PointsDataset(), batch_size=10, progress=False)
    assert a.records == b.records
    c = evaluate_model(ScriptedModel(), PointsDataset(), seed=1, progress=False)
    assert [r["instruction"] for r in c.records] != [r["instruction"] for r in a.records]
    fixed = evaluate_model(ScriptedModel(), PointsDataset(), progress=False,
                           instruction_policy="first")
    assert {r["instruction"] for r in fixed.records} == {INSTRUCTIONS[0]}


def test_resume_continues_after_the_finished_batches(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(ScriptedModel(fail_after=2), PointsDataset(),
                       batch_size=3, out_dir=tmp_path, progress=False)
    assert len((tmp_path / "predictions.partial.jsonl").read_text().splitlines()) == 6
    model = ScriptedModel()
    resumed = evaluate_model(model, PointsDataset(), batch_size=3, out_dir=tmp_path, progress=False)
    assert model.calls == [[106, 107, 108], [109]]
    whole = evaluate_model(ScriptedModel(), PointsDataset(), batch_size=3,
                           progress=False)
    assert resumed.records == whole.records and resumed.metrics == whole.metrics


def test_changed_settings_start_over(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(ScriptedModel(fail_after=1), PointsDataset(),
                       batch_size=3, out_dir=tmp_path, progress=False)
    model = ScriptedModel()
    evaluate_model(model, PointsDataset(), batch_size=3, seed=5, out_dir=tmp_path, progress=False)
    assert sum(map(len, model.calls)) == N


class OracleEncoder(torch.nn.Module):
    """Classifier stand-in: logits peak at the label encoded in the points."""

    objective = "classify"
    normalizer = None

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def class_logits(self, points):
        labels = points[:, 0, 0].long()
        labels = torch.where(points[:, 0, 1].long() % 2 == 0, labels, (labels + 1) % len(CLASSES))
        return torch.nn.functional.one_hot(labels, len(CLASSES)).float() * 5


def test_encoder_classifier_uses_the_same_metrics(tmp_path):
    result = evaluate_encoder(OracleEncoder(), PointsDataset(), batch_size=4, out_dir=tmp_path, progress=False)
    assert result.metrics.accuracy == pytest.approx(0.5)
    assert result.metrics.miss_rate == 0 and result.metrics.ambiguous_rate is None
    assert (tmp_path / "predictions.jsonl").is_file() and (tmp_path / "report.md").is_file()
    assert 0 < result.records[0]["confidence"] <= 1
    loaded = EvalResult.load(tmp_path)
    assert loaded.answered() is None and loaded.class_probabilities() is None  # an encoder neither answers nor scores


def test_bad_settings_are_reported():
    from facephi.utils.errors import FacePhiError

    with pytest.raises(ValueError, match="instruction_policy"):
        evaluate_model(ScriptedModel(), PointsDataset(), instruction_policy="x")
    with pytest.raises(FacePhiError, match="batch size"):
        evaluate_model(ScriptedModel(), PointsDataset(), batch_size=0, progress=False)


def write_landmark_folder(root, n: int = 12):
    """A minimal `facephi extract` output: landmarks.npy + samples.csv, train/test splits."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "landmarks.npy", rng.uniform(0.2, 0.8, (n, 478, 3)).astype(np.float32))
    rows = ["index,path,label,split,width,height"]
    for i in range(n):
        label = "" if i == n - 1 else CLASSES[i % len(CLASSES)]
        rows.append(f"{i},img_{i}.jpg,{label},{'test' if i % 2 else 'train'},64,48")
    (root / "samples.csv").write_text("\n".join(rows) + "\n")
    return root


def test_eval_cli_with_an_encoder_checkpoint(tmp_path, capsys):
    from facephi.cli import main
    from train_fixtures import write_encoder

    data = write_landmark_folder(tmp_path / "data")
    encoder = write_encoder(tmp_path / "encoder")
    code = main(["eval", "--model", str(encoder), "--data", str(data), "--out", str(tmp_path / "out"),
                 "--threads", "1", "--device", "cpu", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "Balanced accuracy (macro recall)" in out
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["n"] == 5  # 6 test samples, the unlabelled one left out
    assert saved["settings"]["kind"] == "encoder" and saved["accuracy_contains"] is None
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(s)["index"] for s in lines] == [1, 3, 5, 7, 9]

    assert main(["eval", "--model", str(encoder), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "landmarks.npy: missing" in capsys.readouterr().err
    assert main(["eval", "--model", str(encoder), "--data", str(data), "--out", str(tmp_path / "o"),
                 "--split", "holdout"]) == 2  # no such split in the data


def tiny_facephi(directory, save: bool = True):
    """A FacePhiModel of a tiny Llama and the tiny LandmarkEncoder of test_predict; saved to
    ``directory`` (returned) or, with ``save=False``, returned in memory."""
    from facephi.model.encoder import LandmarkEncoder
    from facephi.model.facephi import FacePhiConfig, FacePhiModel
    from facephi.model.projector import ProjectorConfig
    from train_fixtures import write_encoder
    from tiny_models import tiny_llm

    encoder = LandmarkEncoder.from_pretrained(write_encoder(directory.parent / f"{directory.name}-encoder"))
    tokenizer = tiny_tokenizer("smollm")
    config = FacePhiConfig(llm="tiny-llama", max_length=96, projector=ProjectorConfig(input_dim=encoder.feature_dim))
    model = FacePhiModel(config, encoder, tiny_llm("llama", tokenizer), tokenizer)
    if not save:
        return model
    model.save_pretrained(directory, save_llm=True)
    return directory


def test_real_tiny_facephi_model_end_to_end(tmp_path):
    from facephi.data.dataset import LandmarkDataset
    from facephi.landmarks.store import LandmarkSet

    data = LandmarkSet.load(write_landmark_folder(tmp_path / "data"))
    model = tiny_facephi(tmp_path / "memory", save=False)
    result = evaluate_model(model, data, "test", batch_size=2, max_new_tokens=4, progress=False)
    indices = [1, 3, 5, 7, 9]
    assert [r["index"] for r in result.records] == indices
    # the answers are the model's own to each sample's normalised points and recorded instruction,
    # asked here in one batch of 5 (evaluation used batches of 2)
    dataset = LandmarkDataset(data, np.array(indices), model.encoder.normalizer)
    points = torch.stack([torch.as_tensor(dataset[k]["points"]) for k in range(len(indices))])
    answers = model.answer(points, [r["instruction"] for r in result.records], max_new_tokens=4)
    assert [r["answer"] for r in result.records] == answers
    # and the metrics are those of the keyword matching of these answers against the true labels
    labels = data.labels[indices].tolist()
    assert [r["true_index"] for r in result.records] == labels
    matches = [match_answer(answer) for answer in answers]
    assert result.metrics.n == 5
    assert result.metrics.accuracy == pytest.approx(np.mean([m.correct(y) for m, y in zip(matches, labels)]))
    assert result.metrics.accuracy_contains == pytest.approx(np.mean([m.contains(y) for m, y in zip(matches, labels)]))


def test_eval_cli_with_a_facephi_checkpoint(tmp_path, capsys):
    from facephi.cli import main

    data = write_landmark_folder(tmp_path / "data")
    checkpoint = tiny_facephi(tmp_path / "facephi")

    code = main(["eval", "--model", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "out"),
                 "--batch-size", "4", "--max-new-tokens", "4", "--limit", "3", "--no-progress", "--device", "cpu"])
    assert code == 0 and "Accuracy, lenient" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["n"] == 3 and saved["settings"]["kind"] == "facephi" and saved["settings"]["limit"] == 3
