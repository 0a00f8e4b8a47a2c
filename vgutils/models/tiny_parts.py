"""What every tiny build shares (the native families' builders in
:mod:`vgutils.models.tiny` and the original-format ones in
:mod:`vgutils.models.tiny_original` both use it; it imports neither): the tiny sizes,
size overrides, and a small trained tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

_CORPUS = [
    "Is there a kidney in the image? Does this image show a colon? Is there a lesion in the liver?",
    "What colour is the square? Is there evidence of abnormal density or masses in the colon?",
    "Write a general description of the image.",
    "Answer the question using a single word or phrase.",
    "yes no left right upper lower lung heart brain liver spleen kidney bone chest abdomen",
    "cat dog person car horse clock rocket coffee cup coins camera motorcycle astronaut",
    "red green blue yellow white black circle square triangle one two three four five",
    "USER: ASSISTANT: system user assistant model You are a helpful assistant.",
]


def train_tokenizer(
    special_tokens: list[str],
    named_tokens: dict[str, str],
    extra_special_tokens: dict[str, str] | None = None,
    vocab_size: int = 400,
    corpus: list[str] | None = None,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus`` (default: a small built-in one),
    with the family's special tokens (``named_tokens``: ``bos_token`` etc.;
    ``extra_special_tokens``: attributes such as ``image_token`` that the family's
    processor reads)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((corpus or _CORPUS) * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        extra_special_tokens=extra_special_tokens or {},
        **named_tokens,
    )


@dataclass(frozen=True)
class BuildShape:
    """Overrides of a build's sizes: ``vision`` / ``text`` (config arguments of the vision
    tower and the language model, e.g. ``image_size`` in pixels, ``num_hidden_layers``),
    ``processor`` (image processor arguments, e.g. ``max_pixels``) and ``extra`` (family
    settings: ``tokens_per_side`` for Gemma 3, ``config``: top-level InternVL config
    arguments). Empty: the tiny sizes."""

    vision: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)
    processor: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
"""The language model of every tiny build."""
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
"""The vision tower of the tiny CLIP, InternViT and SigLIP builds (Qwen's names differ)."""
