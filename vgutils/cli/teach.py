"""``teach``: the teaching model: ``train`` it, write its held-out ``data``, ``evaluate``
it (:mod:`vgutils.teach`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vgutils.cli import COMMANDS
from vgutils.cli.options import add_data_root


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("teach", help=COMMANDS["teach"].help)
    commands = parser.add_subparsers(dest="teach_command", required=True)
    train = commands.add_parser("train", help="train the teaching model (minutes on CPU)")
    train.add_argument("--out", required=True, type=Path)
    train.add_argument("--smoke", action="store_true", help="the seconds-long CI recipe")
    train.add_argument("--medical-share", type=float, help="share of medical scenes")
    train.add_argument("--steps", type=int, help="LLaVA-stage steps")
    train.add_argument(
        "--grounding-loss-weight",
        type=float,
        help="weight of the grounding loss (box or even spread; 0: none; see teach/train.py)",
    )
    train.add_argument("--seed", type=int)
    train.add_argument("--device", default="cpu", help="cpu (the recipe's target) or cuda")
    train.set_defaults(run=run_train)
    data = commands.add_parser("data", help="write the held-out teach-* datasets")
    add_data_root(data)
    data.set_defaults(run=run_data)
    evaluate = commands.add_parser(
        "evaluate", help="acceptance: accuracy, best-layer ratios, query following"
    )
    evaluate.add_argument("--model", default="tiny:teach")
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--scenes", type=int, default=60, help="held-out scenes per domain")
    evaluate.set_defaults(run=run_evaluate)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vgutils.teach.train import SMOKE, Recipe, train_teaching_model

    recipe = SMOKE if args.smoke else Recipe()
    changes = {
        k: v
        for k, v in (
            ("medical_share", args.medical_share),
            ("steps", args.steps),
            ("grounding_loss_weight", args.grounding_loss_weight),
            ("seed", args.seed),
        )
        if v is not None
    }
    print(train_teaching_model(args.out, replace(recipe, **changes), device=args.device))
    return 0


def run_data(args: argparse.Namespace) -> int:
    from vgutils.data.manifest import data_root
    from vgutils.teach.datasets import build_teach_sets

    for name, path in build_teach_sets(data_root(args.data_root)).items():
        print(f"{name}: {path}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from vgutils.models import load_model
    from vgutils.teach.evaluate import CRITERIA, acceptance, passes

    measures = acceptance(load_model(args.model, device=args.device), args.scenes)
    verdict = passes(measures)
    print(f"{args.model}: acceptance on {args.scenes} held-out scenes per domain")
    for name, value in measures.items():
        op, limit = CRITERIA.get(name, ("", None))
        check = f"  (criterion {op} {limit:g}: {'ok' if verdict[name] else 'FAILS'})" if op else ""
        print(f"  {name:17s} {value:8.3f}{check}")
    print(f"acceptance: {'passes' if all(verdict.values()) else 'FAILS'}")
    return 0
