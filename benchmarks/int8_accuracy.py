"""How close can int8 come to float32 answers? Simulated int8 on real faces (issue 21's int8 lever).

    python benchmarks/int8_accuracy.py --faces 150 --threads 2 --out benchmarks/results/int8_accuracy.md

Issue 21 makes int8 the default precision only if its class agrees with float32's for ≥ 99 % of
faces. This measures what any int8 scheme could reach, with the arithmetic of each scheme simulated
in float32 on the shipped model's answering copy of the LLM (LoRA merged; the LM head untied from
the input embeddings): weights rounded to int8 with one scale per output channel and back
(**weight-only**: the best an int8-weight kernel computing in float can do); plus the inputs of every
linear layer rounded to int8 with one scale per token (**W8A8 per token**) or one per tensor
(**W8A8 per tensor**: what PyTorch's dynamic int8, ``--precision int8``, does); and weight-only
with the LM head left in float32. For ``--faces`` seeded FER+ Test faces and as many web-dev faces,
``answer_and_probabilities`` (float32 fast path, the default instruction) gives, per scheme: the
share of faces whose most probable class and whose answer's class equal float32's, and answers
word for word. Also: how many faces float32 itself decides by a small margin (top-two class
log-probability gap), which bounds what any lower precision can agree on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCHEMES = ("float32", "weight-only int8", "weight-only int8, LM head float32", "W8A8 per token", "W8A8 per tensor")
MARGINS = (0.01, 0.05, 0.1, 0.2)


def round_int8(x: Any, dim: int | None) -> Any:
    """``x`` rounded to symmetric int8 with one scale per slice along ``dim`` (None: one scale), and back."""
    import torch

    peak = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    scale = torch.clamp(peak, min=1e-12) / 127
    return torch.clamp(torch.round(x / scale), -127, 127) * scale


def simulate(llm: Any, scheme: str) -> list[Any]:
    """Apply ``scheme`` to ``llm``'s linear layers in place; returns the hooks to remove."""
    import torch

    hooks = []
    if scheme == "float32":
        return hooks
    for name, module in llm.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if scheme.endswith("LM head float32") and module is llm.get_output_embeddings():
            continue
        with torch.no_grad():
            module.weight.copy_(round_int8(module.weight, dim=1))
        if scheme.startswith("W8A8"):
            dim = -1 if scheme.endswith("per token") else None
            hooks.append(module.register_forward_pre_hook(lambda _m, args, dim=dim: (round_int8(args[0], dim),)))
    return hooks


def run(model: Any, points: Any, instruction: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Answers, their classes (−1: none named) and class probabilities, one face at a time."""
    import torch

    from facephi.scoring.keywords import predict_class

    answers, named, probs = [], [], []
    with torch.inference_mode():
        for i in range(len(points)):
            (text,), p = model.answer_and_probabilities(points[i:i + 1], [instruction])
            named_class = predict_class(text)
            answers.append(text)
            named.append(-1 if named_class is None else named_class)
            probs.append(p[0].double().numpy())
    return answers, np.array(named), np.array(probs)


def faces(data: Path, split: str, n: int, model: Any) -> Any:
    from facephi.landmarks.store import LandmarkSet

    found = LandmarkSet.load(data, drop_invalid=True)
    idx = found.select(split)
    chosen = np.sort(np.random.default_rng(0).choice(idx, min(n, len(idx)), replace=False))
    return model.encoder.normalize(found.landmarks[chosen], found.sizes[chosen])


def markdown(command: str, results: dict[str, dict[str, Any]], margins: dict[str, list[float]], n: dict[str, int]) -> str:
    lines = ["# int8 against float32 on real faces (simulated int8 arithmetic)", "", f"`{command}`", "",
             __doc__.split("\n\n")[2].replace("\n", " "), "",
             "| scheme | set | faces | most probable class = float32 | answer's class = float32 | answers word for word "
             "| max probability difference |", "|---|---|---:|---:|---:|---:|---:|"]
    for scheme, by_set in results.items():
        for name, row in by_set.items():
            lines.append(f"| {scheme} | {name} | {n[name]} | {row['class']:.4f} | {row['answer_class']:.4f} | "
                         f"{row['identical']}/{n[name]} | {row['max_diff']:.2e} |")
    lines += ["", "float32's own margins: share of faces whose top-two class log-probabilities differ by less than:",
              "", "| set | " + " | ".join(f"< {m:g}" for m in MARGINS) + " |", "|---|" + "---:|" * len(MARGINS)]
    for name, shares in margins.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * s:.1f} %" for s in shares) + " |")
    lines.append("")
    for scheme, by_set in results.items():
        for name, row in by_set.items():
            lines.append(f"int8_class_agreement[{scheme}, {name}]={row['class']:.4f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="FacePhi model folder (default: the shipped one)")
    parser.add_argument("--ferplus", type=Path, default=ROOT / "data" / "ferplus")
    parser.add_argument("--web", type=Path, default=ROOT / "data" / "webfaces-dev")
    parser.add_argument("--faces", type=int, default=150, help="faces per set")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.model is not None and not (args.model / "config.json").is_file():
        print(f"int8_accuracy: error: {args.model}: no config.json (--model)", file=sys.stderr)
        return 2
    for path, flag in ((args.ferplus, "--ferplus"), (args.web, "--web")):
        if not (path / "landmarks.npy").is_file():
            print(f"int8_accuracy: error: {path}: no landmarks.npy ({flag}; run `facephi extract` first)", file=sys.stderr)
            return 2
    if args.faces < 1 or args.threads < 1:
        print("int8_accuracy: error: --faces and --threads must be >= 1", file=sys.stderr)
        return 2
    import torch

    from facephi.data.templates import INSTRUCTIONS
    from facephi.model.defaults import SHIPPED_MODEL
    from facephi.model.facephi import FacePhiModel

    torch.set_num_threads(args.threads)
    model = FacePhiModel.from_pretrained(args.model or SHIPPED_MODEL).eval()
    sets = {"FER+ Test": faces(args.ferplus, "test", args.faces, model), "web-dev": faces(args.web, "all", args.faces, model)}
    prefix = model.answering_prefix()
    llm = prefix.llm
    head = llm.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)  # untied from the input embeddings
    original = {k: v.clone() for k, v in llm.state_dict().items()}
    outputs: dict[str, dict[str, tuple]] = {}
    for scheme in SCHEMES:
        llm.load_state_dict(original)
        hooks = simulate(llm, scheme)
        prefix.clear()
        model.decoder().trie.record = lambda tokens: None  # the same drafts for every scheme (speed only)
        outputs[scheme] = {name: run(model, points, INSTRUCTIONS[0]) for name, points in sets.items()}
        for hook in hooks:
            hook.remove()
        print(f"{scheme}: done", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for scheme in SCHEMES[1:]:
        results[scheme] = {}
        for name in sets:
            ref_answers, ref_named, ref_probs = outputs["float32"][name]
            answers, named, probs = outputs[scheme][name]
            results[scheme][name] = {
                "class": float((probs.argmax(1) == ref_probs.argmax(1)).mean()),
                "answer_class": float((named == ref_named).mean()),
                "identical": sum(a == b for a, b in zip(answers, ref_answers)),
                "max_diff": float(np.abs(probs - ref_probs).max())}
    margins = {}
    for name in sets:
        logs = np.sort(np.log(outputs["float32"][name][2] + 1e-300), axis=1)
        gap = logs[:, -1] - logs[:, -2]
        margins[name] = [float((gap < m).mean()) for m in MARGINS]
    command = (f"python benchmarks/int8_accuracy.py" + (f" --model {args.model}" if args.model else "") + f" --faces {args.faces} --threads {args.threads}"
               + (f" --out {args.out}" if args.out else ""))
    text = markdown(command, results, margins, {name: len(points) for name, points in sets.items()})
    print(text)
    if args.out is not None:
        from facephi.utils.io import write_text

        write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
