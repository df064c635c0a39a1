"""``radnode evaluate`` and ``radnode train``: thin CLI drivers around :mod:`pipelines.evaluation`
and :mod:`pipelines.training` (the logic lives there and is tested without the CLI)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from node.cli import _load
    from pipelines.base import RuntimeOptions
    from pipelines.evaluation import EvaluationError, evaluate, find_cases
    from pipelines.registry import create_pipeline

    config = _load(args.config)
    if args.pipeline not in config.pipelines:
        print(f"radnode evaluate: no pipeline {args.pipeline!r} in {args.config} "
              f"(known: {', '.join(sorted(config.pipelines))})", file=sys.stderr)
        return 2
    try:
        cases = find_cases(args.images, args.labels)
    except EvaluationError as exc:
        print(f"radnode evaluate: {exc}", file=sys.stderr)
        return 2
    # Exactly as a worker builds it (node/worker.py): the [pipelines.NAME] settings and [workers] options.
    runtime = RuntimeOptions(device=config.workers.device, torch_threads=config.workers.torch_threads)
    pipeline = create_pipeline(args.pipeline, config.pipelines[args.pipeline], runtime)
    report = evaluate(pipeline, cases, args.out, show_progress=not args.no_progress, keep_series=args.keep_series)
    data = report.as_dict()
    for case in data["cases"]:
        if case["error"]:
            print(f"{case['name']}: FAILED: {case['error']}", file=sys.stderr)
    print(json.dumps({k: data[k] for k in ("pipeline", "n_cases", "n_failed", "mean_dice", "mean_hd95_mm",
                                           "mean_volume_error_percent")}))
    print(f"report: {args.out / 'report.html'}", file=sys.stderr)
    return 1 if data["n_failed"] else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pipelines.training import TrainingError, TrainingOptions, train

    options = TrainingOptions(
        network=args.network,
        patch_size=tuple(args.patch_size),
        epochs=args.epochs,
        learning_rate=args.lr,
        val_split=args.val_split,
        seed=args.seed,
        batch_size=args.batch_size,
        torch_threads=args.threads,
        segment_name=args.segment_name,
        stop_at_dice=args.stop_at_dice,
        device=args.device,
    )
    try:
        result = train(args.images, args.labels, args.out, options, resume=args.resume,
                       show_progress=not args.no_progress)
    except TrainingError as exc:
        print(f"radnode train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"bundle": str(args.out), "best_dice": result.best_dice, "best_epoch": result.best_epoch,
                      "epochs_run": result.epochs_run, "seconds": round(result.seconds, 1)}))
    return 0


def add_ml_commands(commands, add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Register ``evaluate`` (through ``add``, which gives it ``--config``) and ``train``."""
    evaluate = add("evaluate", "run a configured pipeline on labeled cases and report Dice, HD95, volumes")
    evaluate.add_argument("--pipeline", required=True, help="a [pipelines.NAME] name from the config")
    evaluate.add_argument("--images", type=Path, required=True,
                          help="NIfTI files, or one folder per DICOM series")
    evaluate.add_argument("--labels", type=Path, required=True,
                          help="NIfTI masks with the same file names, or DICOM SEG (NAME.dcm or NAME/)")
    evaluate.add_argument("--out", type=Path, required=True, help="folder for report.json and report.html")
    evaluate.add_argument("--keep-series", action="store_true",
                          help="keep the DICOM series written from NIfTI images in OUT/series")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=_cmd_evaluate)

    train = commands.add_parser("train", help="train a segmentation network and write a MONAI bundle")
    train.add_argument("--images", type=Path, required=True, help="NIfTI images")
    train.add_argument("--labels", type=Path, required=True, help="NIfTI label maps with the same file names")
    train.add_argument("--out", type=Path, required=True, help="bundle folder to write (kind 'bundle' serves it)")
    train.add_argument("--network", choices=["unet", "basicunet"], default="unet")
    train.add_argument("--patch-size", type=int, nargs=3, default=[32, 32, 32], metavar=("X", "Y", "Z"),
                       help="training patch and sliding-window size in voxels (multiples of 16)")
    train.add_argument("--epochs", type=int, default=50)
    train.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    train.add_argument("--val-split", type=float, default=0.2, help="fraction of cases held out for validation")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    train.add_argument("--segment-name", default="Foreground", help="name of label 1 in the bundle metadata")
    train.add_argument("--stop-at-dice", type=float, default=None,
                       help="stop once the validation Dice reaches this value")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    train.add_argument("--resume", action="store_true", help="continue from OUT/models/checkpoint.pt")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)
