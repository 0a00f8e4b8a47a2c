"""The data manifest (``data_manifest/manifest.yaml``) and its hash registry
(``data_manifest/registry.txt``, pooch's ``name sha256 [url]`` format, ``unpinned`` where
the hash is not known yet). The data root and any registries laid over this one come from
the context in force (:mod:`vgutils.context`)."""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vgutils import context
from vgutils.errors import DataError, UsageError
from vgutils.paths import DATA_MANIFEST

UNPINNED = "unpinned"
MANIFEST_FILE = DATA_MANIFEST / "manifest.yaml"
REGISTRY_FILE = DATA_MANIFEST / "registry.txt"


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of the manifest; paths relative to the data root."""

    name: str
    file: str
    image_root: str
    bbox_format: str
    bbox_format_rules: tuple[tuple[str, str], ...] = ()  # (image string prefix, format)
    q_type: str | None = None
    domain: str | None = None
    url: str | None = None
    obtain: str = ""
    info: dict = field(default_factory=dict)

    def format_for(self, image: str) -> str:
        """The box format of a row whose ``image`` is ``image`` (manifest rule): a rule
        matches when the row's ``image`` string itself (the relative path as written in
        the row, not its base name) starts with the rule's prefix, as in the authors' code
        (docs/METHOD.md, "Slake rule")."""
        for prefix, fmt in self.bbox_format_rules:
            if str(image).startswith(prefix):
                return fmt
        return self.bbox_format


def data_root(override: str | Path | None = None) -> Path:
    """``override``, else the context's data root (``$VGUTILS_DATA``, else ``data/`` in
    the repository)."""
    if override is not None:
        return Path(override)
    return context.current().data_root


def load_manifest(path: Path | None = None) -> dict[str, DatasetEntry]:
    """Datasets of the manifest by name."""
    raw = yaml.safe_load((path or MANIFEST_FILE).read_text())
    entries = {}
    for name, spec in raw["datasets"].items():
        rules = tuple((r["image_prefix"], r["format"]) for r in spec.get("bbox_format_rules", []))
        entries[name] = DatasetEntry(
            name=name,
            file=spec["file"],
            image_root=spec["image_root"],
            bbox_format=spec["bbox_format"],
            bbox_format_rules=rules,
            q_type=spec.get("q_type"),
            domain=spec.get("domain"),
            url=spec.get("url"),
            obtain=spec.get("obtain", ""),
            info={k: spec[k] for k in ("source", "licence") if k in spec},
        )
    return entries


@dataclass(frozen=True)
class BenchmarkEntry:
    """One multiple-choice benchmark of the manifest (``benchmarks:``): ``file`` (the json,
    relative to the data root; its images are relative to its folder)."""

    name: str
    file: str
    datasets: tuple[str, ...] = ()
    url: str | None = None
    obtain: str = ""
    info: dict = field(default_factory=dict)


def load_benchmarks(path: Path | None = None) -> dict[str, BenchmarkEntry]:
    """Benchmarks of the manifest by name (none when it has no ``benchmarks:``)."""
    raw = yaml.safe_load((path or MANIFEST_FILE).read_text())
    return {
        name: BenchmarkEntry(
            name=name,
            file=spec["file"],
            datasets=tuple(spec.get("datasets", ())),
            url=spec.get("url"),
            obtain=spec.get("obtain", ""),
            info={k: spec[k] for k in ("source", "licence", "protocol") if k in spec},
        )
        for name, spec in (raw.get("benchmarks") or {}).items()
    }


def manifest_models(path: Path | None = None) -> dict[str, dict]:
    """Models the figures use: name -> ``{hub_id, family, licence}``."""
    return yaml.safe_load((path or MANIFEST_FILE).read_text())["models"]


def read_registry(path: Path | None = None) -> dict[str, tuple[str, str | None]]:
    """``{relative path: (sha256 or "unpinned", url or None)}`` of ``path``; by default
    ``registry.txt`` with the hashes of the context's registries standing in for the names
    they list (e.g. a rehearsal's synthetic files, :mod:`vgutils.context`)."""
    if path is None:
        registry = read_registry(REGISTRY_FILE)
        for overlay in context.current().registries:
            if overlay.is_file():
                registry.update(
                    {name: (digest, None) for name, (digest, _) in read_registry(overlay).items()}
                )
        return registry
    registry = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable ({err})") from err
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise DataError(f"{path}:{number}: expected 'name sha256 [url]', got {line[:80]!r}")
        if parts[1] != UNPINNED and not re.fullmatch(r"[0-9a-f]{64}", parts[1]):
            raise DataError(
                f"{path}:{number}: {parts[1][:80]!r} is neither a sha256 (64 hex digits) "
                f"nor {UNPINNED!r}"
            )
        if parts[0] in registry:
            raise DataError(f"{path}:{number}: {parts[0]} is listed twice")
        registry[parts[0]] = (parts[1], parts[2] if len(parts) == 3 else None)
    return registry


def write_registry(registry: dict[str, tuple[str, str | None]], path: Path | None = None):
    """Write ``registry`` back, sorted, keeping the header comment."""
    path = path or REGISTRY_FILE
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    rows = [
        " ".join(p for p in (name, digest, url) if p)
        for name, (digest, url) in sorted(registry.items())
    ]
    path.write_text("\n".join([*header, *rows]) + "\n")


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(name: str, root: Path, registry: dict | None = None) -> Path:
    """The local path of registry file ``name`` after checking it exists and matches its
    pinned hash; ``DataError`` naming the file, expected and actual hash otherwise.
    Unpinned files are only checked for existence."""
    registry = read_registry() if registry is None else registry
    path = root / name
    if not path.exists():
        raise DataError(missing_message(name, root))
    expected, _ = registry.get(name, (UNPINNED, None))
    if expected != UNPINNED:
        actual = sha256(path)
        if actual != expected:
            raise DataError(
                f"{path}: sha256 mismatch: expected {expected}, got {actual}. "
                "The file differs from the pinned release; refusing to use it."
            )
    return path


def missing_message(name: str, root: Path) -> str:
    """What to do about a missing data file, from the manifest's ``obtain`` notes."""
    for entry in [*load_manifest().values(), *load_benchmarks().values()]:
        if entry.file == name:
            return f"{root / name} is missing. {entry.obtain or ''}".strip()
    return f"{root / name} is missing."


def fetch(name: str, root: Path) -> Path:
    """Make registry file ``name`` present under ``root``: verify it, or download it with
    pooch when it has a URL and the network allows (not when the context is offline,
    ``$VGUTILS_OFFLINE``); otherwise say where to put it."""
    registry = read_registry()
    path = root / name
    if path.exists():
        return verify_file(name, root, registry)
    digest, url = registry.get(name, (UNPINNED, None))
    if url is None or context.current().offline:
        raise DataError(missing_message(name, root))
    import pooch

    known_hash = None if digest == UNPINNED else f"sha256:{digest}"
    try:
        pooch.retrieve(url, known_hash=known_hash, fname=path.name, path=path.parent)
    except Exception as err:  # network errors differ by backend; the advice does not
        raise DataError(f"could not download {url} ({err}). {missing_message(name, root)}") from err
    return verify_file(name, root, registry)


def pin(root: Path, names: list[str] | None = None) -> list[str]:
    """Record the sha256 of every present, unpinned registry file (or of ``names``);
    returns the names pinned."""
    registry = read_registry(REGISTRY_FILE)  # the real release's, never a rehearsal's
    for name in names or []:
        if name not in registry:
            raise UsageError(
                f"data pin: {name!r} is not in {REGISTRY_FILE}; " + _registry_hint(name, registry)
            )
        if not (root / name).is_file():
            raise DataError(f"data pin: {root / name} is missing; nothing was pinned")
    pinned = []
    for name, (digest, url) in registry.items():
        wanted = name in names if names else digest == UNPINNED
        if wanted and (root / name).exists():
            registry[name] = (sha256(root / name), url)
            pinned.append(name)
    if pinned:
        write_registry(registry)
    return pinned


def _registry_hint(name: str, registry: dict) -> str:
    close = difflib.get_close_matches(name, list(registry), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"{len(registry)} names are listed there"


def verify(root: Path, names: list[str] | None = None) -> list[tuple[str, str]]:
    """``(name, status)`` for every registry file (or those starting with one of
    ``names``): ``ok``, ``unpinned``, ``missing`` or the mismatch message."""
    registry = read_registry()
    if names:
        unknown = [n for n in names if not any(k.startswith(n) for k in registry)]
        if unknown:
            raise UsageError(
                f"data verify: no registry file starts with {unknown[0]!r}; "
                + _registry_hint(unknown[0], registry)
            )
        registry = {k: v for k, v in registry.items() if any(k.startswith(n) for n in names)}
    statuses = []
    for name, (digest, _) in registry.items():
        path = root / name
        if not path.exists():
            statuses.append((name, "missing"))
        elif digest == UNPINNED:
            statuses.append((name, UNPINNED))
        else:
            actual = sha256(path)
            statuses.append(
                (name, "ok" if actual == digest else f"MISMATCH expected {digest}, got {actual}")
            )
    return statuses
