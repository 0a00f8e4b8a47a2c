"""What a saved figure was made from, written into the figure file itself.

:class:`Provenance` holds the git commit of the source tree (``<sha>-dirty`` when the
tree has uncommitted changes, ``unknown`` outside a git checkout), the profile, the
figures' protocol, each model with its revision (a Hub commit, or the sha256 of a local
or tiny model folder) and each dataset or benchmark with the sha256 of its file, all as
the runs' ``run.json`` record them (:mod:`vgutils.results`), never as guessed from
names.

:func:`vgutils.plots.save_figure` writes it into both files: PNG text chunks (key
``vgutils:provenance``, JSON, plus a readable ``Description``) and the PDF Info
dictionary (``Keywords``: the same JSON, ``Subject``: the readable line; matplotlib's
PDF backend accepts only the standard Info keys). :func:`read_figure` reads it back
(``python -m vgutils report`` prints the table).

The commit is read once per process (:func:`source_commit`); the runs are read when a
figure is saved, so that runs made by the notebook itself (VQA, benchmarks) count.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vgutils.context import REPO_ROOT

PNG_KEY = "vgutils:provenance"
"""The PNG text chunk holding the provenance (JSON)."""
PDF_KEY = "Keywords"
"""The PDF Info entry holding the provenance (JSON)."""
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Provenance:
    """What one figure was made from. ``models``: ``(model id, revision)`` pairs, the
    revision being ``hub:<commit>`` or ``folder-sha256:<hex>``; ``data``: ``(dataset or
    benchmark, sha256:<hex> of its file)`` pairs; both sorted and deduplicated."""

    commit: str
    profile: str
    protocol: str
    models: tuple[tuple[str, str], ...] = ()
    data: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> str:
        """ASCII JSON (safe in a PNG tEXt chunk and a PDF literal string)."""
        record = {
            "commit": self.commit,
            "profile": self.profile,
            "protocol": self.protocol,
            "models": [list(pair) for pair in self.models],
            "data": [list(pair) for pair in self.data],
        }
        return json.dumps(record, sort_keys=True, ensure_ascii=True)

    @classmethod
    def from_json(cls, text: str) -> Provenance:
        record = json.loads(text)
        return cls(
            commit=str(record["commit"]),
            profile=str(record["profile"]),
            protocol=str(record["protocol"]),
            models=tuple(tuple(pair) for pair in record.get("models", [])),
            data=tuple(tuple(pair) for pair in record.get("data", [])),
        )

    def summary(self) -> str:
        """One readable line: commit, profile, protocol, model and dataset counts."""
        return (
            f"vgutils commit {self.commit}; profile {self.profile}; protocol {self.protocol}; "
            f"{len(self.models)} model(s), {len(self.data)} data file(s)"
        )

    def png_metadata(self) -> dict[str, str]:
        """``savefig(..., metadata=...)`` for a PNG (PIL text chunks)."""
        return {PNG_KEY: self.to_json(), "Description": self.summary()}

    def pdf_metadata(self) -> dict[str, str]:
        """``savefig(..., metadata=...)`` for a PDF (standard Info keys only)."""
        return {PDF_KEY: self.to_json(), "Subject": self.summary()}


def git_commit(root: Path = REPO_ROOT) -> str:
    """``root``'s checked-out commit, ``<sha>-dirty`` when its tree has uncommitted
    changes (tracked or untracked, not ignored files), ``unknown`` when ``root`` is not
    the top of a git checkout (an installed package) or git is missing."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        if Path(top).resolve() != Path(root).resolve():
            return UNKNOWN  # a package installed inside someone else's repository
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return f"{commit}-dirty" if dirty else commit


@functools.cache
def source_commit() -> str:
    """:func:`git_commit` of the package's source tree, read once per process (a
    notebook's figures all carry the commit its kernel started with)."""
    return git_commit(REPO_ROOT)


def revision_of(identity: dict) -> str:
    """A run's model revision as recorded in ``run.json``'s identity."""
    if identity.get("model_revision"):
        return f"hub:{identity['model_revision']}"
    if identity.get("model_folder_sha256"):
        return f"folder-sha256:{identity['model_folder_sha256']}"
    return UNKNOWN


def from_runs(
    profile: str, protocol: str, folders: list[Path], commit: str | None = None
) -> Provenance:
    """The provenance of a figure drawn from the runs in ``folders`` (each with a
    ``run.json``; folders without one are skipped). ``commit``: default
    :func:`source_commit`."""
    from vgutils.results import read_run_file

    models: set[tuple[str, str]] = set()
    data: set[tuple[str, str]] = set()
    for folder in folders:
        run = read_run_file(Path(folder))
        if run is None:
            continue
        identity, options = run["identity"], run["options"]
        model = identity.get("model") or options.get("model")
        if model:
            models.add((str(model), revision_of(identity)))
        for name_key, hash_key in (
            ("dataset", "dataset_sha256"),
            ("benchmark", "benchmark_sha256"),
        ):
            name = identity.get(name_key) or options.get(name_key)
            digest = identity.get(hash_key)
            if name and digest:
                data.add((str(name), f"sha256:{digest}"))
    return Provenance(
        commit=commit if commit is not None else source_commit(),
        profile=profile,
        protocol=protocol,
        models=tuple(sorted(models)),
        data=tuple(sorted(data)),
    )


def run_folders(results: Path) -> list[Path]:
    """The run folders (with a ``run.json``) directly under a profile's results folder."""
    if not Path(results).is_dir():
        return []
    return sorted(p.parent for p in Path(results).glob("*/run.json"))


# --- reading it back ---


def read_figure(path: Path) -> Provenance | None:
    """The provenance recorded in a PNG or PDF written by :func:`vgutils.plots.save_figure`
    (None: the file records none, e.g. one written by an older version)."""
    path = Path(path)
    if path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(PNG_KEY)
    elif path.suffix == ".pdf":
        text = pdf_info(path.read_bytes()).get(PDF_KEY)
    else:
        raise ValueError(f"{path}: not a PNG or PDF")
    if not text:
        return None
    try:
        return Provenance.from_json(text)
    except (ValueError, KeyError, TypeError):
        return None


_INFO_REF = re.compile(rb"/Info\s+(\d+)\s+(\d+)\s+R")
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def pdf_info(data: bytes) -> dict[str, str]:
    """The string entries of a PDF's document Info dictionary (the last trailer's, as an
    incremental update leaves it): literal ``(...)`` strings with their escapes and
    ``<...>`` hex strings, UTF-16 (with its byte-order mark) or Latin-1 decoded. No PDF
    library is a dependency; this reads the uncompressed Info object matplotlib writes
    (an Info dictionary inside a compressed object stream reads as empty)."""
    refs = _INFO_REF.findall(data)
    if not refs:
        return {}
    number, generation = refs[-1]
    start = None
    for match in re.finditer(rb"(?:^|[\r\n\s])%b\s+%b\s+obj\b" % (number, generation), data):
        start = match.end()  # the last definition wins (incremental updates)
    if start is None:
        return {}
    opening = data.find(b"<<", start)
    if opening < 0:
        return {}
    return _parse_dict(data, opening + 2)


def _parse_dict(data: bytes, at: int) -> dict[str, str]:
    info: dict[str, str] = {}
    key: str | None = None
    while at < len(data):
        char = data[at : at + 1]
        if char.isspace():
            at += 1
        elif data.startswith(b">>", at):
            break
        elif char == b"/":
            end = at + 1
            while end < len(data) and data[end : end + 1] not in b" \t\r\n/()<>[]{}%":
                end += 1
            name = data[at + 1 : end].decode("latin-1")
            if key is None:
                key = name
            else:  # a name value (e.g. /Trapped /False)
                info[key], key = name, None
            at = end
        elif char == b"(":
            raw, at = _literal(data, at + 1)
            if key is not None:
                info[key], key = _decode(raw), None
        elif char == b"<":
            end = data.index(b">", at)
            raw = bytes.fromhex(re.sub(rb"\s", b"", data[at + 1 : end]).decode("ascii"))
            if key is not None:
                info[key], key = _decode(raw), None
            at = end + 1
        else:  # a number, reference or keyword value: skipped to the next token
            end = at
            while end < len(data) and data[end : end + 1] not in b"/(<>":
                end += 1
            key, at = None, end
    return info


def _literal(data: bytes, at: int) -> tuple[bytes, int]:
    """A literal string's bytes from just after its ``(``; returns (bytes, next index)."""
    out = bytearray()
    depth = 1
    while at < len(data):
        char = data[at : at + 1]
        if char == b"\\":
            following = data[at + 1 : at + 2]
            if following in _ESCAPES:
                out += _ESCAPES[following]
                at += 2
            elif following.isdigit():
                digits = re.match(rb"[0-7]{1,3}", data[at + 1 : at + 4])
                if digits is None:  # not octal: the backslash is ignored
                    at += 1
                    continue
                out.append(int(digits.group(), 8) & 0xFF)
                at += 1 + len(digits.group())
            elif following in (b"\r", b"\n"):  # a line continuation
                at += 2
                if following == b"\r" and data[at : at + 1] == b"\n":
                    at += 1
            else:  # \( \) \\ and any other character stand for themselves
                out += following
                at += 2
            continue
        if char == b"(":
            depth += 1
        elif char == b")":
            depth -= 1
            if depth == 0:
                return bytes(out), at + 1
        out += char
        at += 1
    raise ValueError("unterminated PDF string")


def _decode(raw: bytes) -> str:
    if raw.startswith(b"\xfe\xff"):
        return raw[2:].decode("utf-16-be")
    return raw.decode("latin-1")
