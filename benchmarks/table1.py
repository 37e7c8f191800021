"""Table 1 on FER+ with SmolLM2: runs (or continues) `facephi reproduce` and writes the results file.

    python benchmarks/table1.py --data data/ferplus --run runs/table1-ferplus-cpu \
        --out benchmarks/results/table1_ferplus_cpu.md [--preset cpu] [--threads 2]

`facephi reproduce` skips finished steps, so this script can be re-run to complete a partial run;
the results file gets the table as it stands plus the run's settings and the per-class recall
of the LLM rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="write the file from the run as it stands")
    args = parser.parse_args()

    from facephi.pipelines.reproduce import ReproduceConfig, reproduce
    from facephi.labels import CLASSES
    from facephi.utils.io import write_text

    run = Path(args.run)
    if not args.report_only:
        reproduce(ReproduceConfig.for_preset(args.preset, data=args.data, out=args.run, threads=args.threads))
    lines = [(run / "table1.md").read_text().rstrip(), "", "## Per-class recall of the LLM rows (%)", "",
             "| row | " + " | ".join(CLASSES) + " |", "|---|" + "---:|" * len(CLASSES)]
    for name in ("zero_shot", "facephi_classify", "facephi_align"):
        path = run / "eval" / name / "metrics.json"
        if path.is_file():
            per_class = json.loads(path.read_text())["per_class"]
            lines.append(f"| {name} | " + " | ".join(f"{100 * per_class[c]['recall']:.1f}" for c in CLASSES) + " |")
    config = json.loads((run / "run.json").read_text())["settings"]
    lines += ["", "## Settings", "", "```json", json.dumps(config, indent=2), "```", ""]
    write_text(args.out, "\n".join(lines))
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
