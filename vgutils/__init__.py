"""vgutils: measure and fix where a multimodal LLM looks in an image.

Reproduction helpers for *How Do Medical MLLMs Fail? A Study on Visual Grounding in
Medical Images* (ICLR 2026). The method is stated in ``docs/METHOD.md``.

This file is the composition root: it registers the teaching models and datasets
(:mod:`vgutils.teach.sources`) with the core's registries, which know nothing of them.
"""

from vgutils.teach import sources as _teach_sources

__version__ = "0.1.0"

_teach_sources.register()
