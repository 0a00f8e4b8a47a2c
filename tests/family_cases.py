"""The (family, strategy) cases of the prefix-sharing and batching tests: every tiny
family with every strategy. The default suite runs all three strategies for the families
whose prompts differ in how the image prefix ends (the first six and ``llava_next``, whose
last image token is an unplaced row end) and ``last`` (the paper's strategy) for the
others; their ``question`` / ``all`` cases are marked slow (``pytest -m slow``) to keep
the suite's time."""

import pytest

from vgutils.models.tiny import TINY_FAMILIES

STRATEGIES = ("last", "question", "all")
EVERY_STRATEGY = ("llava", "qwen2_5_vl", "internvl", "gemma3", "llava_qwen2", "llava_mistral")
EVERY_STRATEGY += ("llava_next",)


def family_strategy_cases() -> list:
    return [
        pytest.param(
            family,
            strategy,
            marks=() if family in EVERY_STRATEGY or strategy == "last" else pytest.mark.slow,
            id=f"{strategy}-{family}",
        )
        for strategy in STRATEGIES
        for family in TINY_FAMILIES
    ]
