"""Image preprocessing once per image, shared by every prompt about it.

Every processor of the supported families goes through transformers'
``ProcessorMixin.__call__``, which runs the image processor (resize, pad, crop, tiles,
normalise) in ``_process_images`` and only then tokenises the text. An image's questions
and its generic prompt differ only in text, so :class:`ImageCache` wraps that one method
of a processor instance and returns the stored result when the same image (by content)
comes again with the same image options. Tokenising the text stays per prompt and is
cheap; the inputs are exactly those of an uncached call.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable

from PIL import Image

CACHED_IMAGES = 16
"""Distinct images kept (least recently used dropped): the images of the batches being
prepared and run; each entry holds one image's pixel tensors."""


def image_key(image: Image.Image) -> tuple:
    """Content key of a PIL image: mode, size and a 128-bit hash of its pixel bytes."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
    return (image.mode, image.size, digest)


def _flat_images(images) -> list:
    if isinstance(images, Image.Image):
        return [images]
    flat = []
    for item in images:
        flat.extend(_flat_images(item) if isinstance(item, list | tuple) else [item])
    return flat


def processor_key(image_processor) -> tuple:
    """Which image processor, with which settings (a swapped processor or a changed
    setting such as ``do_pad`` is another computation)."""
    settings = json.dumps(image_processor.to_dict(), sort_keys=True, default=str)
    return (id(image_processor), settings)


class ImageCache:
    """Stands in for ``processor._process_images``: computes ``(pixel inputs, text
    replacements)`` once per (images, image processor and its settings, image options)
    and returns them afterwards. ``calls`` counts the real computations (what the tests
    check); thread-safe, so a background loader and the main thread may share a
    processor."""

    def __init__(self, process: Callable, processor, size: int = CACHED_IMAGES):
        self.process = process
        self.processor = processor
        self.size = size
        self.calls = 0
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, images, **kwargs):
        flat = _flat_images(images)
        if not all(isinstance(image, Image.Image) for image in flat):
            return self.process(images, **kwargs)  # arrays / tensors: not cached
        key = (
            tuple(image_key(image) for image in flat),
            processor_key(self.processor.image_processor),
            repr(sorted(kwargs.items())),
        )
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        result = self.process(images, **kwargs)
        with self._lock:
            self.calls += 1
            self._entries[key] = result
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return result


def install_image_cache(processor) -> ImageCache:
    """Wrap ``processor``'s image step in an :class:`ImageCache` (once) and return it."""
    current = processor.__dict__.get("_process_images")
    if isinstance(current, ImageCache):
        return current
    cache = ImageCache(processor._process_images, processor)
    processor._process_images = cache
    return cache
