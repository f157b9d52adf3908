"""``eat``: the pipeline's steps from the shell (scripts, clusters, ``torchrun``).

    eat train    --arch resnet --out results/models/resnet/standard
    eat evaluate --model results/models/resnet/standard/model.pt --out results/metrics/resnet/standard_clean.json
"""

from __future__ import annotations

import argparse
import json
import sys

from eatlib import checkpoint, pipeline
from eatlib.config import ConfigError, load_params


def _train(args) -> None:
    params = load_params(args.params)
    history = pipeline.train(params, args.arch, args.out, progress=not args.quiet)
    print(json.dumps(history[-1], indent=2))


def _evaluate(args) -> None:
    params = load_params(args.params)
    result = pipeline.evaluate_clean(params, args.model)
    if args.out:
        checkpoint.write_json(result, args.out)
    print(json.dumps(result["clean"], indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eat", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model")
    train.add_argument("--arch", required=True, help="architecture family: a key of `models` in params.yaml")
    train.add_argument("--out", required=True, help="run folder (checkpoint.pt, model.pt); resumes if present")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="clean clustering + retrieval scores on the test classes")
    evaluate.add_argument("--model", required=True, help="model.pt written by `eat train`")
    evaluate.add_argument("--out", help="write the scores as JSON here")
    evaluate.set_defaults(run=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"eat: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
