"""One loaded multimodal model: prompt preparation, attention capture, generation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vgutils.geometry import BOX_MAPPINGS, TokenLayout, rescaled_layout, scaled_layout
from vgutils.models.attention import PRECISIONS, capture, set_attention_precision
from vgutils.models.families import FamilyAdapter
from vgutils.models.preprocess import install_image_cache

ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
GENERIC_QUESTION = "Write a general description of the image."
STRATEGIES: tuple[str, ...] = ("last", "question", "all")


IMAGE_RESIZES: tuple[str, ...] = ("processor", "qwen_vl_utils")
"""``processor``: the processor resizes the image (ours); ``qwen_vl_utils``: the authors'
Qwen path, ``qwen_vl_utils.fetch_image`` first (a PIL bicubic resize to multiples of
``patch x merge`` within the processor's ``min_pixels`` / ``max_pixels``), then the
processor (Qwen family only)."""
QWEN_RESIZE_FAMILIES = ("qwen2_5_vl", "qwen3_vl")
SEPARATE_VISION_TOWER = ("llava_qwen2", "llava_mistral")
"""Original-format LLaVA checkpoints: their own code loads the CLIP tower by itself
(``CLIPVisionModel.from_pretrained``, transformers' default sdpa), so under
``attention_precision="model"`` only their language model runs eager; every other family
runs eager throughout, as ``from_pretrained(..., attn_implementation="eager")`` does in
the authors' Qwen path."""


def qwen_pre_resize(image: Image.Image, processor) -> Image.Image:
    """``image`` as the authors' Qwen path hands it to the processor:
    ``qwen_vl_utils.fetch_image`` with the processor's own pixel limits and patch size."""
    from qwen_vl_utils import fetch_image

    ip = processor.image_processor
    size = ip.size
    limits = {
        "min_pixels": size["shortest_edge"] if isinstance(size, dict) else size.shortest_edge,
        "max_pixels": size["longest_edge"] if isinstance(size, dict) else size.longest_edge,
    }
    return fetch_image({"image": image, **limits}, image_patch_size=ip.patch_size)


def question_prompt_text(question: str) -> str:
    """The user text of a question prompt (docs/METHOD.md): question + answer instruction."""
    return f"{question.strip()} {ANSWER_INSTRUCTION}"


def to_device(inputs, device: torch.device):
    """``inputs`` (a BatchFeature) on ``device``; on CUDA through pinned memory with
    non-blocking copies, so a background loader's copies overlap the GPU's work."""
    device = torch.device(device)
    if device.type != "cuda":
        return inputs.to(device)
    for key, value in inputs.items():
        if torch.is_tensor(value):
            inputs[key] = value.pin_memory().to(device, non_blocking=True)
    return inputs


class PromptTooLong(ValueError):
    """A prompt with more tokens than the model's context (its position embeddings)."""


def too_long(prepare, *args) -> str | None:
    """``None`` if the prompt ``prepare(*args)`` makes fits the model's context, else the
    reason to skip the question (:class:`PromptTooLong`'s message)."""
    try:
        prepare(*args)
    except PromptTooLong as err:
        return f"question too long: {err}"
    return None


@dataclass(frozen=True, eq=False)
class Prepared:
    """A prompt ready for the model.

    - ``inputs``: BatchFeature for ``vlm.model(**inputs)`` (batch of one).
    - ``image_positions``: ``(N,)`` sequence indices of the image tokens that have a place
      in the image (``layout.unplaced`` ones, LLaVA-NeXT's row ends, left out).
    - ``query_positions``: ``"last"`` (final prompt row), ``"question"`` (rows after the
      last image token of the prompt), ``"all"`` (every row) -> sequence indices.
    - ``layout``: where the ``N`` image tokens lie in the original image.
    - ``prompt``: the exact text given to the processor.
    """

    inputs: object
    image_positions: np.ndarray
    query_positions: dict[str, np.ndarray]
    layout: TokenLayout
    prompt: str


class VisionLanguageModel:
    """A transformers image-text-to-text model with its processor and family adapter.

    ``model``, ``processor``, ``family``, ``num_layers`` and ``num_heads`` (of the language
    model) are public. The text layers run the ``vgutils`` attention function (sdpa plus
    capture / knockout); see :mod:`vgutils.models.attention`. Two protocol settings live
    here: ``image_resize`` (:data:`IMAGE_RESIZES`) and ``attention_precision``
    (``float32`` or ``model``; :meth:`configure`).
    """

    def __init__(self, model, processor, adapter: FamilyAdapter, source: str):
        self.model = model
        self.processor = processor
        self.adapter = adapter
        self.family = adapter.name
        self.source = source
        self.image_resize = "processor"
        self.attention_precision = "float32"
        text_config = model.config.get_text_config()
        self.num_layers = int(text_config.num_hidden_layers)
        self.num_heads = int(text_config.num_attention_heads)
        context = getattr(text_config, "max_position_embeddings", None)
        self.context_length = int(context) if context else None
        """Positions the language model has (``max_position_embeddings``); a longer prompt
        is refused (:class:`PromptTooLong`), never run past what the model was built for."""
        self.image_token_id = int(adapter.image_token_id(model))
        # an image's prompts share one run of the image processor (see preprocess.py)
        self.image_cache = install_image_cache(processor)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def configure(
        self, *, image_resize: str | None = None, attention_precision: str | None = None
    ) -> VisionLanguageModel:
        """Set the protocol settings this model acts on (``None``: unchanged); returns
        it. ``image_resize="qwen_vl_utils"`` for a family outside the Qwen path is a
        ``ValueError``."""
        if image_resize is not None:
            if image_resize not in IMAGE_RESIZES:
                raise ValueError(f"unknown image_resize {image_resize!r}; expected {IMAGE_RESIZES}")
            if image_resize == "qwen_vl_utils" and self.family not in QWEN_RESIZE_FAMILIES:
                raise ValueError(
                    f"image_resize 'qwen_vl_utils' is the Qwen path; {self.family!r} is not "
                    f"one of {QWEN_RESIZE_FAMILIES}"
                )
            self.image_resize = image_resize
        if attention_precision is not None:
            if attention_precision not in PRECISIONS:
                raise ValueError(
                    f"unknown attention_precision {attention_precision!r}; expected {PRECISIONS}"
                )
            set_attention_precision(self.model, attention_precision)
            vision = "eager" if attention_precision == "model" else "sdpa"
            if self.family in SEPARATE_VISION_TOWER:
                vision = "sdpa"
            if getattr(self.model.config, "vision_config", None) is not None:
                self.model.set_attn_implementation({"vision_config": vision})
            self.attention_precision = attention_precision
        return self

    @property
    def head_mean_dtype(self) -> str | None:
        """The dtype the head mean is taken in (:func:`vgutils.scoring.head_mean`): the
        model's under ``attention_precision="model"``, else ``None`` (float64)."""
        if self.attention_precision != "model":
            return None
        return str(self.model.dtype).removeprefix("torch.")

    def prepare(
        self, image: Image.Image, question: str, box_mapping: str = "processor"
    ) -> Prepared:
        """Build the chat prompt for ``question`` (raw; the answer instruction is added)
        about ``image`` (PIL, RGB) and locate its image and query tokens.
        ``box_mapping``: ``"processor"`` (the layout follows the processor's real
        geometry) or ``"scaled"`` (the authors' mapping, :func:`vgutils.geometry.scaled_layout`:
        the token grid stretched over the whole image; ``ValueError`` for tiled InternVL)."""
        return self._prepare(image, question_prompt_text(question), box_mapping)

    def prepare_text(
        self, image: Image.Image, user_text: str, box_mapping: str = "processor"
    ) -> Prepared:
        """Like :meth:`prepare` with ``user_text`` as the whole user text (no answer
        instruction added), e.g. a multiple-choice prompt
        (:func:`vgutils.benchmarks.mc_prompt_text`)."""
        return self._prepare(image, user_text, box_mapping)

    def prepare_generic(self, image: Image.Image, box_mapping: str = "processor") -> Prepared:
        """The generic prompt (docs/METHOD.md) for the same image, for normalisation."""
        return self._prepare(image, question_prompt_text(GENERIC_QUESTION), box_mapping)

    def _prepare(
        self, image: Image.Image, user_text: str, box_mapping: str = "processor"
    ) -> Prepared:
        if box_mapping not in BOX_MAPPINGS:
            raise ValueError(f"unknown box_mapping {box_mapping!r}; expected one of {BOX_MAPPINGS}")
        image = image.convert("RGB")
        shown = (
            qwen_pre_resize(image, self.processor) if self.image_resize != "processor" else image
        )
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}
        ]
        prompt = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        inputs = self.processor(images=[shown], text=[prompt], return_tensors="pt")
        ids = inputs["input_ids"][0].numpy()
        image_tokens = np.flatnonzero(ids == self.image_token_id)
        if self.context_length and len(ids) > self.context_length:
            raise PromptTooLong(
                f"prompt of {len(ids)} tokens ({len(image_tokens)} of them the image's) "
                f"exceeds the model's context of {self.context_length} tokens"
            )
        layout = self.adapter.layout(self.processor, shown.size, inputs)
        if shown.size != image.size:  # pre-resized: back to the original's pixels
            layout = rescaled_layout(layout, image.size)
        if len(image_tokens) != layout.prompt_tokens:
            raise RuntimeError(
                f"{self.family}: the prompt has {len(image_tokens)} image tokens but the "
                f"processor geometry gives {layout.prompt_tokens}"
            )
        image_positions = image_tokens[layout.placed()]
        if box_mapping == "scaled":
            layout = scaled_layout(layout, self.family)
        length = len(ids)
        query_positions = {
            "last": np.array([length - 1]),
            "question": np.arange(image_tokens[-1] + 1, length),
            "all": np.arange(length),
        }
        return Prepared(
            inputs=to_device(inputs, self.device),
            image_positions=image_positions,
            query_positions=query_positions,
            layout=layout,
            prompt=prompt,
        )

    @torch.no_grad()
    def attention_maps(
        self, prepared: Prepared, strategies: tuple[str, ...] = STRATEGIES
    ) -> dict[str, np.ndarray]:
        """One forward; per strategy the raw softmax weights from its query rows to the
        image tokens, averaged over the rows: float32 ``(layers, heads, N)``."""
        unknown = set(strategies) - set(STRATEGIES)
        if unknown:
            raise ValueError(f"unknown strategies {sorted(unknown)}; expected {STRATEGIES}")
        rows = {name: prepared.query_positions[name] for name in strategies}
        with capture(rows, prepared.image_positions) as recorder:
            self.model(**prepared.inputs, use_cache=False, logits_to_keep=1)
        return {
            name: torch.stack([recorder.maps[name][layer][0] for layer in range(self.num_layers)])
            .cpu()
            .numpy()
            for name in strategies
        }

    def attention(self, prepared: Prepared, strategy: str = "last") -> np.ndarray:
        """Raw softmax weights from the ``strategy`` query row(s) to the ``N`` image tokens,
        averaged over the rows: float32 ``(layers, heads, N)``; language-model layers."""
        return self.attention_maps(prepared, (strategy,))[strategy]

    @torch.no_grad()
    def generate(
        self, prepared: Prepared, max_new_tokens: int | None = 16, settings: dict | None = None
    ) -> str:
        """The answer to the prepared prompt, special tokens stripped: greedy, or with
        ``settings`` (``model.generate`` kwargs as they are, e.g. a
        :data:`vgutils.protocols.DECODINGS` entry; what they leave out comes from the
        checkpoint's generation config). ``max_new_tokens``, when given, wins."""
        kwargs = dict(settings) if settings is not None else {"do_sample": False}
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
            if kwargs.get("min_new_tokens", 0) > max_new_tokens:
                kwargs["min_new_tokens"] = max_new_tokens
        output = self.model.generate(**prepared.inputs, **kwargs)
        new_tokens = output[0, prepared.inputs["input_ids"].shape[1] :]
        return self.processor.decode(new_tokens, skip_special_tokens=True).strip()
