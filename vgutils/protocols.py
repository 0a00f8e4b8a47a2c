"""Named protocols: the authors' settings and ours, as presets of the package's options.

docs/METHOD.md, "Protocol settings: the authors' values and ours", lists every setting where
the authors' public code and this package differ. Each is a named option (box mapping,
processor kwargs, triage denominator, knockout layers and rows, decoding, number of
heads); a protocol fixes all of them at once, and an explicit option overrides a single
setting. Results carry the protocol's name (``run.json`` and a ``protocol`` column).

- ``authors``: what the authors' code does. Boxes scaled onto the stretched token grid
  (for tiled InternVL, where the authors' code defines no mapping, the processor's tiles:
  :data:`SCALED_UNDEFINED`);
  Qwen-family images capped at ``max_pixels = 50176``, ``min_pixels = 784`` (at most 64
  image tokens; other families keep their processor); each top head's map divided by its
  layer's mean generic map; one knockout layer, the most visually sensitive one
  (:func:`vgutils.refine.best_layer`); generated tokens not blocked; exactly one new
  token; 20 heads.
- ``corrected`` (the default): the processor's real geometry; native resolution (the
  checkpoint's own limits); each head divided by its own generic map; knockout in every
  layer that holds a top head; generated tokens blocked too; decoding as the benchmark
  needs (16 new tokens unless set); 20 heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_PROTOCOL = "corrected"

SCALED_UNDEFINED = ("internvl",)
"""Families whose images give several token grids (tiles): the authors' stretched-grid
mapping does not exist for them, so a protocol's ``scaled`` means the processor's
geometry there (an explicit ``box_mapping="scaled"`` still refuses)."""

QWEN_CAP = {"max_pixels": 50176, "min_pixels": 784}
"""The authors' Qwen2.5-VL image size (at most 64 image tokens)."""


@dataclass(frozen=True)
class Protocol:
    """One preset. ``processor_kwargs`` maps a family name (``qwen2_5_vl``) to the
    processor kwargs it gets; ``knockout_layers`` is ``"best"`` (one layer) or
    ``"heads"`` (every layer holding a top head)."""

    name: str
    box_mapping: str
    processor_kwargs: dict = field(default_factory=dict)
    denominator: str = "head"
    knockout_layers: str = "heads"
    include_generated: bool = True
    max_new_tokens: int = 16
    top_k: int = 20

    def box_mapping_for(self, family: str | None) -> str:
        """This protocol's box mapping for a model of ``family``."""
        if self.box_mapping == "scaled" and family in SCALED_UNDEFINED:
            return "processor"
        return self.box_mapping

    def processor_kwargs_for(self, family: str) -> dict:
        """The processor kwargs this protocol gives a model of ``family``."""
        return dict(self.processor_kwargs.get(family, {}))


PROTOCOLS: dict[str, Protocol] = {
    "authors": Protocol(
        name="authors",
        box_mapping="scaled",
        processor_kwargs={"qwen2_5_vl": QWEN_CAP},
        denominator="layer",
        knockout_layers="best",
        include_generated=False,
        max_new_tokens=1,
        top_k=20,
    ),
    "corrected": Protocol(
        name="corrected",
        box_mapping="processor",
        processor_kwargs={},
        denominator="head",
        knockout_layers="heads",
        include_generated=True,
        max_new_tokens=16,
        top_k=20,
    ),
}


def get_protocol(name: str | None) -> Protocol:
    """The protocol called ``name`` (``None``: the default, ``corrected``)."""
    name = name or DEFAULT_PROTOCOL
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def model_family(model: str, revision: str | None = None, trust_remote_code: bool = False):
    """The family adapter name of ``model`` (from its config only; no weights loaded;
    an original-format LLaVA checkpoint's is its ``model_type``, e.g. ``llava_qwen2``)."""
    from transformers import AutoConfig

    from vgutils.models.families import family_of
    from vgutils.models.original import original_config
    from vgutils.models.sources import resolve

    source = resolve(model)
    original = original_config(source, revision)
    if original is not None:  # transformers cannot read it before the conversion
        return original["model_type"]
    from vgutils.models.errors import model_errors

    with model_errors(model, source, revision):
        config = AutoConfig.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
    try:
        return family_of(config).name
    except ValueError:  # e.g. an original-format checkpoint before its conversion
        return getattr(config, "model_type", "unknown")


def parse_processor_kwarg(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(key, value)``; the value read as YAML (``true``, ``50176``,
    ``[1, 2]``), so numbers and booleans keep their type."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"processor kwarg {text!r}: expected KEY=VALUE")
    return key.strip(), yaml.safe_load(value)
