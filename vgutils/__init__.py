"""vgutils: measure and fix where a multimodal LLM looks in an image.

Reproduction helpers for *How Do Medical MLLMs Fail? A Study on Visual Grounding in
Medical Images* (ICLR 2026). The method is stated in ``shared/paper/METHOD.md``.
"""

__version__ = "0.1.0"
