"""One loaded multimodal model: prompt preparation, attention capture, generation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vgutils.geometry import BOX_MAPPINGS, TokenLayout, scaled_layout
from vgutils.models.attention import capture
from vgutils.models.families import FamilyAdapter
from vgutils.models.preprocess import install_image_cache

ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
GENERIC_QUESTION = "Write a general description of the image."
STRATEGIES: tuple[str, ...] = ("last", "question", "all")


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
    - ``image_positions``: ``(N,)`` sequence indices of the image tokens.
    - ``query_positions``: ``"last"`` (final prompt row), ``"question"`` (rows after the
      last image token), ``"all"`` (every row) -> sequence indices.
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
    capture / knockout); see :mod:`vgutils.models.attention`.
    """

    def __init__(self, model, processor, adapter: FamilyAdapter, source: str):
        self.model = model
        self.processor = processor
        self.adapter = adapter
        self.family = adapter.name
        self.source = source
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
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}
        ]
        prompt = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        inputs = self.processor(images=[image], text=[prompt], return_tensors="pt")
        ids = inputs["input_ids"][0].numpy()
        image_positions = np.flatnonzero(ids == self.image_token_id)
        if self.context_length and len(ids) > self.context_length:
            raise PromptTooLong(
                f"prompt of {len(ids)} tokens ({len(image_positions)} of them the image's) "
                f"exceeds the model's context of {self.context_length} tokens"
            )
        layout = self.adapter.layout(self.processor, image.size, inputs)
        if len(image_positions) != layout.n_tokens:
            raise RuntimeError(
                f"{self.family}: the prompt has {len(image_positions)} image tokens but the "
                f"processor geometry gives {layout.n_tokens}"
            )
        if box_mapping == "scaled":
            layout = scaled_layout(layout, self.family)
        length = len(ids)
        query_positions = {
            "last": np.array([length - 1]),
            "question": np.arange(image_positions[-1] + 1, length),
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
    def generate(self, prepared: Prepared, max_new_tokens: int = 16) -> str:
        """Greedy answer to the prepared prompt, special tokens stripped."""
        output = self.model.generate(
            **prepared.inputs, max_new_tokens=max_new_tokens, do_sample=False
        )
        new_tokens = output[0, prepared.inputs["input_ids"].shape[1] :]
        return self.processor.decode(new_tokens, skip_special_tokens=True).strip()
