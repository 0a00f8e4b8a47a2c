"""``make teach``: retrain the teaching recipe (seed 0) into a folder of its own (never
over the pinned copy), run the acceptance evaluation on the retrained and the pinned
model, and print the measures side by side with their difference. Exit status 1 when the
retrained model fails acceptance (a retrained model on another CPU differs from the pinned
one in its weights, not in passing: BLAS kernels sum in another order per processor).

    python -m vgutils.teach.compare [--out build/teach/retrained] [--scenes 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vgutils.errors import DataError
from vgutils.teach.evaluate import CRITERIA, MEASURES, passes
from vgutils.teach.pinned import verify_pinned
from vgutils.teach.sweep import evaluate_model
from vgutils.teach.train import Recipe, is_current, train_teaching_model


def _cell(name: str, value: float) -> str:
    if name.startswith(("accuracy", "mc_")):
        return f"{100 * value:.1f}%"
    if name.startswith("layer"):
        return f"{value:g}"
    return f"{value:.3f}"


def comparison_table(retrained: dict, pinned: dict) -> str:
    """Markdown table: measure, criterion, retrained, pinned, difference (retrained minus
    pinned), and whether each model meets the criterion."""
    ok_retrained, ok_pinned = passes(retrained), passes(pinned)
    lines = [
        "| measure | criterion | retrained | pinned | difference | retrained ok | pinned ok |",
        "|---" * 7 + "|",
    ]
    for name in MEASURES:
        op, limit = CRITERIA.get(name, ("", None))
        criterion = f"{op} {limit:g}" if op else ""
        diff = retrained[name] - pinned[name]
        shown = f"{100 * diff:+.1f} pt" if name.startswith(("accuracy", "mc_")) else f"{diff:+.3f}"
        marks = [
            ("yes" if ok[name] else "NO") if name in CRITERIA else ""
            for ok in (ok_retrained, ok_pinned)
        ]
        values = f"{_cell(name, retrained[name])} | {_cell(name, pinned[name])}"
        lines.append(f"| {name} | {criterion} | {values} | {shown} | {marks[0]} | {marks[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgutils.teach.compare", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("build/teach/retrained"))
    parser.add_argument("--scenes", type=int, default=60, help="held-out scenes per domain")
    args = parser.parse_args(argv)
    try:
        pinned_dir = verify_pinned()
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    if args.out.resolve() == pinned_dir.resolve():
        print("error: --out is the pinned folder; retrain elsewhere", file=sys.stderr)
        return 2
    recipe = Recipe()
    started = time.perf_counter()
    if is_current(args.out, recipe):
        print(f"{args.out}: already trained with the current recipe; evaluating it")
    else:
        print(f"training the teaching recipe (seed {recipe.seed}) into {args.out} ...", flush=True)
        train_teaching_model(args.out, recipe)
        print(f"trained in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    print("acceptance evaluation (held-out scenes) ...", flush=True)
    retrained = evaluate_model(args.out, args.scenes, recipe.threads)
    pinned = evaluate_model(pinned_dir, args.scenes, recipe.threads)
    same = (args.out / "model.safetensors").read_bytes() == (
        pinned_dir / "model.safetensors"
    ).read_bytes()
    print(comparison_table(retrained, pinned))
    print(
        f"retrained weights {'byte-identical to' if same else 'differ from'} the pinned ones "
        "(another CPU gives other floating-point sums, so other weights with the same acceptance)"
    )
    ok = all(passes(retrained).values())
    print(
        f"retrained model {'passes' if ok else 'FAILS'} acceptance; pinned model "
        f"{'passes' if all(passes(pinned).values()) else 'FAILS'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
