"""``eat``: the pipeline's steps from the shell (scripts, clusters, ``torchrun``).

    eat train    --arch resnet --out runs/resnet/standard                  # model.pt; resumes if interrupted
    eat train    --arch resnet --defense eat --out runs/resnet/eat
    eat evaluate --model runs/resnet/standard/model.pt --out runs/resnet/standard/clean.json

Several processes (one per GPU; gloo on CPU) with DistributedDataParallel, same results as one process with the
same global train.batch_size (see eatlib.distributed):

    torchrun --nproc-per-node=4 -m eatlib.cli train --arch resnet --out runs/resnet/standard [--sync-bn]
    torchrun --nproc-per-node=4 --no-python eat train --arch resnet --out runs/resnet/standard

An ensemble's members on different GPUs, in one process:

    eat train --arch resnet --defense eat --member-devices cuda:0,cuda:1,cuda:2 --out runs/resnet/eat

Exit status: 0 done, 2 bad input (checked before any work; the message names the option or params.yaml key, the
value and what is allowed), 1 a run that stopped (non-finite loss, unreadable checkpoint). Under torchrun a
failing process makes torchrun itself exit with 1 (ChildFailedError), whatever the child's code; the message
is in the failing rank's error output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from eatlib import checkpoint, distributed, pipeline
from eatlib.defenses import TRAINING_DEFENSES
from eatlib.load import load_params
from eatlib.params import ConfigError, Params
from eatlib.train import ResumeError

FILE_DATASETS_HINT = "the dataset unpacked in its official layout (see README: The paper datasets)"


def _params(args) -> Params:
    if not Path(args.params).is_file():
        raise ConfigError(
            f"--params: got {args.params!r}, which is not a file; allowed: the path of a parameter file "
            "(default params.yaml in the current folder)"
        )
    return load_params(args.params)


def check_train_request(params: Params, arch: str, defense: str, out: str, *, sync_bn: bool = False,
                        member_devices: list[str] | None = None) -> None:
    """Everything ``eat train`` can check before loading data or building a model."""
    if arch not in params.models:
        raise ConfigError(f"--arch: got {arch!r}; allowed: a key of models in params.yaml: {sorted(params.models)}")
    if defense not in TRAINING_DEFENSES:
        raise ConfigError(f"--defense: got {defense!r}; allowed: a training defense: {sorted(TRAINING_DEFENSES)}")
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out: got {out!r}, an existing file; allowed: a run folder (created if missing)")
    data = params.data
    if data.name != "glyphs":  # generated in memory; the paper datasets live under data.root
        folder = data.dataset_root() / data.name
        if not folder.is_dir():
            raise ConfigError(
                f"data.root: {str(data.root)!r} has no folder {folder} for data.name {data.name!r}; allowed: a "
                f"folder holding {folder.name}/ with {FILE_DATASETS_HINT}"
            )
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if params.train.batch_size % processes:
        raise ConfigError(
            f"train.batch_size: got {params.train.batch_size}; allowed: a multiple of the {processes} processes "
            "(batch_size is the global batch, split evenly over the ranks)"
        )
    on_cuda = params.device.startswith("cuda") or (params.device == "auto" and torch.cuda.is_available())
    if sync_bn and processes > 1 and not on_cuda:
        raise ConfigError("--sync-bn: allowed only on GPUs (torch's SyncBatchNorm); on CPU set train.freeze_bn: "
                          "true for the single-process statistics, or keep per-rank statistics")
    if member_devices:
        members = getattr(params.defense_options(defense), "members", None)
        allowed = f"one device per member ({members}), e.g. cuda:0,cuda:1, in a single process (not torchrun)"
        if members is None or len(member_devices) != members or processes > 1:
            raise ConfigError(f"--member-devices: got {','.join(member_devices)} for {defense}; allowed: {allowed}")
        for device in member_devices:
            try:
                parsed = torch.device(device)
            except RuntimeError:
                raise ConfigError(f"--member-devices: got {device!r}; allowed: cpu, cuda, cuda:N") from None
            if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
                raise ConfigError(f"--member-devices: got {device!r}; allowed: one of the "
                                  f"{torch.cuda.device_count()} visible GPUs (cuda:0..), or cpu")


def _train(args) -> None:
    params = _params(args)
    member_devices = args.member_devices.split(",") if args.member_devices else None
    check_train_request(params, args.arch, args.defense, args.out, sync_bn=args.sync_bn,
                        member_devices=member_devices)
    init = pipeline.resolve_init(params, args.arch, args.init)
    if init is not None and not Path(init).is_file():
        raise ConfigError(f"--init: got {args.init!r}, but {init} does not exist; allowed: 'pretrained' once the "
                          f"pretrain stage has run (dvc repro pretrain@{args.arch}), 'none' (from scratch), or the "
                          "path of a model.pt")
    current = distributed.init_from_env(params.device)
    try:
        out = Path(args.out)
        fit_options = {"sync_bn": args.sync_bn, "member_devices": member_devices}
        history = pipeline.train(params, args.arch, args.defense, init=init, out_path=out / "model.pt",
                                 run_dir=out, progress=not args.quiet, fit_options=fit_options)
    finally:
        distributed.shutdown()
    if current.is_main:
        print(json.dumps(history[-1], indent=2))


def _evaluate(args) -> None:
    params = _params(args)
    if not Path(args.model).is_file():
        raise ConfigError(f"--model: got {args.model!r}, which is not a file; allowed: a model.pt by `eat train`")
    result = pipeline.evaluate_clean(params, args.model)
    if args.out:
        checkpoint.write_json(result, args.out)
    print(json.dumps(result["clean"], indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eat", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model (under torchrun: one process per device)")
    train.add_argument("--arch", required=True, help="architecture family: a key of `models` in params.yaml")
    train.add_argument("--defense", default="standard", help="training defense (default: standard)")
    train.add_argument("--out", required=True,
                       help="run folder: model.pt, and per-epoch checkpoints keyed by the configuration (deleted at "
                            "the end), from which an interrupted run of the same configuration resumes")
    train.add_argument("--sync-bn", action="store_true",
                       help="under torchrun on GPUs: BatchNorm with the statistics of the global batch")
    train.add_argument("--member-devices", metavar="DEVICES",
                       help="ensembles in one process: one device per member, e.g. cuda:0,cuda:1")
    train.add_argument("--init", default="pretrained",
                       help="starting weights: 'pretrained' (the pretrain stage's model when params.yaml has a "
                            "pretrain section; default), 'none' (from scratch), or the path of a model.pt")
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
    except (ConfigError, FileNotFoundError) as error:  # bad input: nothing was trained
        print(f"eat: error: {error}", file=sys.stderr)
        return 2
    except (checkpoint.CheckpointError, FloatingPointError, ResumeError) as error:  # a run that had to stop
        print(f"eat: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
