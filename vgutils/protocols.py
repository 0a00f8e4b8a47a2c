"""Named protocols: the authors' settings and ours, as presets of the package's options.

docs/METHOD.md, "Protocol settings: the authors' values and ours", lists every setting where
the authors' public code and this package differ. Each is a named option; a protocol fixes
all of them at once, and an explicit option overrides a single setting. Results carry the
protocol's name (``run.json`` and a ``protocol`` column). Option: ``authors`` value /
``corrected`` value (the default).

- ``box_mapping``: ``scaled`` (boxes scaled onto the token grid stretched over the image;
  for tiled InternVL, where the authors' code defines no mapping, the processor's tiles:
  :data:`SCALED_UNDEFINED`) / ``processor`` (the processor's real geometry).
- processor kwargs: Qwen family ``max_pixels = 50176``, ``min_pixels = 784`` (at most 64
  image tokens) / the checkpoint's own limits.
- ``image_resize``: Qwen family ``qwen_vl_utils`` (its PIL bicubic resize to multiples of
  28 (Qwen2.5-VL; 32 for Qwen3-VL) within the pixel limits, then the processor) /
  ``processor`` (one processor resize).
- ``image_mode``: :data:`AUTHORS_IMAGE_MODE` (HuatuoGPT-Vision ``convert``: alpha
  dropped; Qwen ``qwen_vl_utils``: RGBA pasted on white; 16-bit clipped by PIL) /
  ``composite`` (every transparent image onto white, 16-bit rescaled from its range).
- ``attention_precision``: ``model`` (eager weights in the model dtype, bf16 on a GPU:
  float32 softmax rounded to bf16; head mean in that dtype) / ``float32`` (rows
  recomputed in float32, head mean in float64).
- ``box_overhang``: ``clamp`` (a box overhanging the image is kept and clamped) /
  ``drop`` (a row whose box overhangs by more than 1 px is reported and dropped).
- ``decoding``: per family, :data:`AUTHORS_DECODING` (HuatuoGPT-Vision ``greedy-1``, Qwen
  ``checkpoint-64``) / the pipeline's own (free text: greedy, ``max_new_tokens`` 16;
  multiple choice: ``greedy-1``).
- VGRefine: triage ``denominator`` ``layer`` (the layer-mean generic map) / ``head``;
  ``knockout_layers`` ``best`` (one layer: the profile gives the authors' layer, else
  :func:`vgutils.refine.best_layer`) / ``heads`` (every layer holding a top head);
  ``include_generated`` no / yes; ``refine_prompt_suffix`` :data:`REFINE_PROMPT_SUFFIX`
  appended to the text VGRefine is given / none (the benchmark's own prompt); ``top_k``
  20 / 20 (the authors' own 20 heads are given by the profile, not ranked).

Per-family values are tables ``{family: value}`` with ``"*"`` for every other family;
:meth:`Protocol.for_family` reads them. A family is the adapter's name
(:func:`model_family`: ``qwen2_5_vl`` serves Qwen2-VL and Qwen2.5-VL, ``llava_qwen2`` is
the original-format HuatuoGPT-Vision-7B).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vgutils.errors import UsageError, choices_hint

DEFAULT_PROTOCOL = "corrected"

SCALED_UNDEFINED = ("internvl", "llava_next")
"""Families whose images give several token grids (InternVL's tiles, LLaVA-NeXT's base
and high-resolution grids): the authors' stretched-grid mapping does not exist for them,
so a protocol's ``scaled`` means the processor's geometry there (an explicit
``box_mapping="scaled"`` still refuses)."""

QWEN_FAMILIES = ("qwen2_5_vl", "qwen3_vl")
"""The families the authors' Qwen path covers (the adapter ``qwen2_5_vl`` serves both
Qwen2-VL and Qwen2.5-VL checkpoints)."""

QWEN_CAP = {"max_pixels": 50176, "min_pixels": 784}
"""The authors' Qwen2.5-VL image size (at most 64 image tokens); the same pixel cap for
Qwen3-VL, whose 32-px cells make it at most 49 tokens."""

REFINE_PROMPT_SUFFIX = " Answer the question using a single word or phrase."
"""What the authors' ``VGRefine()`` appends to the text it is given."""

ATTENTION_PRECISIONS = ("model", "float32")
BOX_OVERHANGS = ("clamp", "drop")
IMAGE_RESIZES = ("qwen_vl_utils", "processor")
IMAGE_MODES = ("composite", "convert", "qwen_vl_utils")
"""See :func:`vgutils.data.images.to_rgb`."""

DECODINGS: dict[str, dict] = {
    "greedy": {"do_sample": False},
    "greedy-1": {"do_sample": False, "min_new_tokens": 1, "max_new_tokens": 1},
    "checkpoint-64": {"max_new_tokens": 64},
    "huatuo-sample": {
        "do_sample": True,
        "temperature": 0.2,
        "repetition_penalty": 1.2,
        "min_new_tokens": 1,
        "max_new_tokens": 256,
    },
}
"""Generation settings by name (passed to ``model.generate`` as they are; whatever a
setting leaves out comes from the checkpoint's generation config).

- ``greedy``: greedy, ``max_new_tokens`` from the run (free text: 16); no minimum.
- ``greedy-1``: greedy, exactly one new token (``min_new_tokens = max_new_tokens = 1``):
  the authors' HuatuoGPT-Vision path (one multiple-choice letter).
- ``checkpoint-64``: up to 64 new tokens, everything else from the checkpoint's
  generation config: the authors' Qwen path.
- ``huatuo-sample``: HuatuoGPT-Vision's own evaluation (``cli.py`` ``gen_kwargs`` with
  ``eval.py``'s ``--max_new_tokens 256``, seed 42)."""

AUTHORS_DECODING = {
    "llava_qwen2": "greedy-1",
    "qwen2_5_vl": "checkpoint-64",
    "qwen3_vl": "checkpoint-64",
    "*": "greedy-1",
}
"""The authors' decoding per family. Their code has two paths: HuatuoGPT-Vision
(``llava_qwen2``; greedy, one token, ``min_new_tokens=1``) and Qwen (Qwen2.5-VL and
Qwen3-VL: up to 64 tokens, the checkpoint's generation config). Every other family
(LLaVA-1.5, LLaVA-Med, InternVL, Gemma 3) follows the HuatuoGPT-Vision path: it is the
authors' one non-Qwen path, the one the LLaVA-style models share, and it answers a
multiple-choice question with its letter."""

AUTHORS_IMAGE_MODE = {
    "llava_qwen2": "convert",
    "qwen2_5_vl": "qwen_vl_utils",
    "qwen3_vl": "qwen_vl_utils",
    "*": "convert",
}
"""The authors' image conversion per family: HuatuoGPT-Vision ``Image.open(path).convert
('RGB')`` (alpha dropped); Qwen ``qwen_vl_utils`` (RGBA pasted on white, every other mode
``convert('RGB')``); the other families follow the HuatuoGPT-Vision path (as for
:data:`AUTHORS_DECODING`). 16-bit images are clipped by PIL in both paths."""


@dataclass(frozen=True)
class Protocol:
    """One preset. ``processor_kwargs``, ``image_resize``, ``image_mode`` and
    ``decoding`` map a family name (``"*"``: every other family) to the value it gets;
    ``knockout_layers`` is ``"best"`` (one layer) or ``"heads"`` (every layer holding a
    top head); ``decoding`` ``None``: the pipeline's own (``max_new_tokens`` for free text,
    ``greedy-1`` for multiple choice)."""

    name: str
    box_mapping: str
    processor_kwargs: dict = field(default_factory=dict)
    denominator: str = "head"
    knockout_layers: str = "heads"
    include_generated: bool = True
    max_new_tokens: int = 16
    top_k: int = 20
    refine_prompt_suffix: str = ""
    image_resize: dict = field(default_factory=lambda: {"*": "processor"})
    image_mode: dict = field(default_factory=lambda: {"*": "composite"})
    attention_precision: str = "float32"
    box_overhang: str = "drop"
    decoding: dict = field(default_factory=lambda: {"*": None})

    def box_mapping_for(self, family: str | None) -> str:
        """This protocol's box mapping for a model of ``family``."""
        if self.box_mapping == "scaled" and family in SCALED_UNDEFINED:
            return "processor"
        return self.box_mapping

    def processor_kwargs_for(self, family: str) -> dict:
        """The processor kwargs this protocol gives a model of ``family``."""
        return dict(self.processor_kwargs.get(family, {}))

    def for_family(self, setting: str, family: str | None):
        """The value of a per-family ``setting`` (``image_resize``, ``image_mode``,
        ``decoding``) for a model of ``family`` (its own entry, else ``"*"``)."""
        table = getattr(self, setting)
        return table.get(family, table["*"]) if family is not None else table["*"]

    @property
    def needs_family(self) -> bool:
        """Whether some setting depends on the model's family (its config is read)."""
        tables = (self.image_resize, self.image_mode, self.decoding)
        return bool(self.processor_kwargs) or any(len(table) > 1 for table in tables)


PROTOCOLS: dict[str, Protocol] = {
    "authors": Protocol(
        name="authors",
        box_mapping="scaled",
        processor_kwargs={"qwen2_5_vl": QWEN_CAP, "qwen3_vl": QWEN_CAP},
        denominator="layer",
        knockout_layers="best",
        include_generated=False,
        max_new_tokens=1,
        top_k=20,
        refine_prompt_suffix=REFINE_PROMPT_SUFFIX,
        image_resize={"qwen2_5_vl": "qwen_vl_utils", "qwen3_vl": "qwen_vl_utils", "*": "processor"},
        image_mode=AUTHORS_IMAGE_MODE,
        attention_precision="model",
        box_overhang="clamp",
        decoding=AUTHORS_DECODING,
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
        refine_prompt_suffix="",
        image_resize={"*": "processor"},
        image_mode={"*": "composite"},
        attention_precision="float32",
        box_overhang="drop",
        decoding={"*": None},
    ),
}


def get_protocol(name: str | None) -> Protocol:
    """The protocol called ``name`` (``None``: the default, ``corrected``)."""
    name = name or DEFAULT_PROTOCOL
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def check_choice(value, choices, name: str):
    """``value`` if it is one of ``choices`` (or ``None``), else a one-line UsageError
    naming the option, the value and the valid choices."""
    if value is not None and value not in choices:
        raise UsageError(f"{name} {value!r}: " + choices_hint(str(value), list(choices)))
    return value


def check_settings(**settings) -> None:
    """Check the protocol settings given explicitly (``None``: the protocol's):
    ``attention_precision``, ``box_overhang``, ``image_resize``, ``image_mode``,
    ``decoding``."""
    choices = {
        "attention_precision": ATTENTION_PRECISIONS,
        "box_overhang": BOX_OVERHANGS,
        "image_resize": IMAGE_RESIZES,
        "image_mode": IMAGE_MODES,
        "decoding": tuple(DECODINGS),
    }
    for key, value in settings.items():
        check_choice(value, choices[key], f"--{key.replace('_', '-')}")


def resolve_settings(options, protocol, family: str | None) -> dict:
    """The protocol settings every runner shares, for a model of ``family``: each left
    ``None`` in ``options`` takes the ``protocol``'s value (``attention_precision``,
    ``image_resize``, ``image_mode``, processor kwargs under the explicit ones, and
    ``box_overhang`` where ``options`` has it). UsageError for a bad value."""
    check_settings(
        attention_precision=options.attention_precision,
        image_resize=options.image_resize,
        image_mode=options.image_mode,
        box_overhang=getattr(options, "box_overhang", None),
    )
    if options.image_resize == "qwen_vl_utils" and family not in QWEN_FAMILIES:
        raise UsageError(
            f"--image-resize qwen_vl_utils is the authors' Qwen path; {options.model} is "
            f"{family!r}, not one of {', '.join(QWEN_FAMILIES)}"
        )
    preset = protocol.processor_kwargs_for(family) if family else {}
    settings = {
        "attention_precision": options.attention_precision or protocol.attention_precision,
        "image_resize": options.image_resize or protocol.for_family("image_resize", family),
        "image_mode": options.image_mode or protocol.for_family("image_mode", family),
        "processor_kwargs": {**preset, **(options.processor_kwargs or {})},
    }
    if hasattr(options, "box_overhang"):
        settings["box_overhang"] = options.box_overhang or protocol.box_overhang
    return settings


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
