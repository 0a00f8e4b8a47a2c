"""The pinned teaching model: the recipe's own seed-0 model as a release artifact.

``vgutils/teach/pinned/`` holds the model trained with :class:`vgutils.teach.train.Recipe`
(seed 0) as ``save_pretrained`` wrote it, with its ``training_log.csv`` and
``recipe.json``; ``vgutils/teach/registry.txt`` records the sha256 of each of its files
(pooch's ``name sha256`` lines, as ``data_manifest/registry.txt``, names relative to the
folder). ``tiny:teach`` loads this copy (after checking every file against the
registry), so a fresh clone never trains; ``make teach`` retrains the recipe elsewhere and
compares (:mod:`vgutils.teach.compare`). ``tiny:teach-smoke`` (the seconds-long CI recipe)
is still trained on first use.

    python -m vgutils.teach.pinned verify      # check the pinned files
    python -m vgutils.teach.pinned pin FOLDER  # replace them by a model of the recipe
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from vgutils.data.manifest import read_registry, sha256
from vgutils.errors import DataError

HERE = Path(__file__).resolve().parent
PINNED_DIR = HERE / "pinned"
REGISTRY = HERE / "registry.txt"
HEADER = (
    "# name sha256: pooch registry of the pinned teaching model (tiny:teach), names relative\n"
    "# to vgutils/teach/pinned/; written by 'python -m vgutils.teach.pinned pin FOLDER'.\n"
)


def verify_pinned(folder: Path = PINNED_DIR, registry: Path = REGISTRY) -> Path:
    """``folder`` after checking that it holds exactly the registry's files, each with its
    recorded sha256; a one-line ``DataError`` naming the file (and both hashes) if not."""
    expected = read_registry(registry)
    if not expected:
        raise DataError(f"{registry}: no pinned files listed")
    for name, (digest, _) in expected.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: pinned teaching-model file missing (listed in {registry})")
        actual = sha256(path)
        if actual != digest:
            raise DataError(
                f"{path}: sha256 mismatch: expected {digest}, got {actual} (registry "
                f"{registry}); the pinned teaching model was changed, refusing to use it"
            )
    extra = sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and str(p.relative_to(folder)) not in expected
    )
    if extra:
        raise DataError(f"{folder / extra[0]}: not in the pinned registry {registry}")
    return folder


def pin(source: Path, folder: Path = PINNED_DIR, registry: Path = REGISTRY) -> Path:
    """Replace the pinned model by the one in ``source``, which must be the current
    recipe's seed-0 model (:func:`vgutils.teach.train.is_current`: the pinned copy is the
    recipe's own model, never one picked by its score), and rewrite the registry."""
    from vgutils.teach.train import Recipe, is_current

    source = Path(source)
    if not is_current(source, Recipe()):
        raise DataError(
            f"{source}: not a model of the current recipe (seed 0) by the current sources; "
            "train it with 'python -m vgutils teach train --out FOLDER'"
        )
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    names = sorted(p.name for p in source.iterdir() if p.is_file())
    for name in names:
        shutil.copyfile(source / name, folder / name)
    rows = "".join(f"{name} {sha256(folder / name)}\n" for name in names)
    registry.write_text(HEADER + rows)
    return verify_pinned(folder, registry)


def teaching_model(family: str, folder: Path, recipe) -> Path:
    """Where ``tiny:<family>`` comes from: ``teach`` is the pinned copy (verified);
    any other teaching recipe (``teach-smoke``) is trained into ``folder`` on first use
    and retrained when its recipe or the training sources changed."""
    if family == "teach":
        return verify_pinned()
    from vgutils.teach.train import is_current, train_teaching_model

    if not is_current(folder, recipe):
        train_teaching_model(folder, recipe)
    return folder


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv == ["verify"]:
            print(f"{verify_pinned()}: {len(read_registry(REGISTRY))} files match {REGISTRY}")
            return 0
        if len(argv) == 2 and argv[0] == "pin":
            print(f"pinned {argv[1]} -> {pin(Path(argv[1]))}; registry {REGISTRY}")
            return 0
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print("usage: python -m vgutils.teach.pinned verify | pin FOLDER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
