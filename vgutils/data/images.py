"""Reading any image the datasets hold as an 8-bit RGB PIL image.

Conversions (documented, deterministic), by ``mode`` (:data:`MODES`; the protocols'
``image_mode``, docs/METHOD.md "transparent images, 16-bit"):

- ``composite`` (ours, the default, every family): 8-bit RGB as is; grayscale (``L``),
  palette (``P``), ``CMYK``: PIL's ``convert``; RGBA / LA / PA / palette with
  transparency: composited onto white; 16-bit and 32-bit integer or float images
  (``I;16``, ``I``, ``F``): scaled linearly from the image's own [min, max] to [0, 255]
  (a constant image becomes black).
- ``convert`` (the authors' HuatuoGPT-Vision path): PIL's ``convert('RGB')`` for every
  mode: the alpha channel is dropped (what lies under a transparent pixel shows) and
  16-bit values are clipped to [0, 255] by PIL, never rescaled.
- ``qwen_vl_utils`` (the authors' Qwen path, ``qwen_vl_utils.vision_process.to_rgb``):
  RGBA pasted onto white through its alpha; every other mode ``convert('RGB')`` (LA and
  palette transparency dropped, 16-bit clipped).
- DICOM (``.dcm``): modality LUT (rescale slope/intercept), then the first VOI window
  (WindowCenter/WindowWidth) if the file has one, else the [min, max] of the pixels;
  MONOCHROME1 is inverted; a multi-frame file gives its first frame; colour DICOM (RGB,
  YBR) is returned as RGB.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from vgutils.errors import DataError

DICOM_SUFFIXES = (".dcm", ".dicom")


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    values = values.astype(np.float64)
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.clip(values, low, high) - low) / (high - low) * 255.0
    return np.round(scaled).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(gray, mode="L").convert("RGB")


def _first(value) -> float:
    """First value of a possibly multi-valued DICOM element."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


@contextlib.contextmanager
def _quiet_pydicom():
    """pydicom's warnings and log lines about a malformed file are not printed: the file's
    problem is raised once, as a ValueError naming it."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def read_dicom_dataset(source: Path | io.BytesIO, stop_before_pixels: bool = False):
    """A DICOM image's dataset; ``ValueError`` saying what is wrong for a file that is not
    one (no DICM marker, no image elements), quietly (see :func:`_quiet_pydicom`)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with _quiet_pydicom():
        try:
            dataset = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            raise ValueError(
                "not a DICOM file (no 'DICM' marker after the 128-byte preamble)"
            ) from None
        except Exception as err:
            raise ValueError(f"not a readable DICOM file ({_first_line(err)})") from None
    if "Rows" not in dataset or "Columns" not in dataset:
        raise ValueError("not a DICOM image (it has no Rows and Columns)")
    return dataset


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


def read_dicom(path: Path | io.BytesIO) -> Image.Image:
    """A DICOM file as RGB, windowed as described in the module docstring."""
    from pydicom.pixels import apply_modality_lut

    dataset = read_dicom_dataset(path)
    with _quiet_pydicom():
        try:
            pixels = dataset.pixel_array
        except Exception as err:
            raise ValueError(f"DICOM pixel data unreadable ({_first_line(err)})") from None
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if dataset.get("SamplesPerPixel", 1) == 3:
        return Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="RGB")
    with _quiet_pydicom():
        values = apply_modality_lut(pixels, dataset).astype(np.float64)
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        center, width = _first(dataset.WindowCenter), _first(dataset.WindowWidth)
        low, high = center - width / 2.0, center + width / 2.0
    else:
        low, high = float(values.min()), float(values.max())
    gray = _scale_to_uint8(values, low, high)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        gray = 255 - gray
    return _gray_to_rgb(gray)


MODES = ("composite", "convert", "qwen_vl_utils")
"""How a non-RGB image becomes RGB (the module docstring)."""


def to_rgb(image: Image.Image, mode: str = "composite") -> Image.Image:
    """Any PIL image as 8-bit RGB, converted by ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown image mode {mode!r}; expected one of {MODES}")
    if image.mode == "RGB":
        return image
    if mode == "convert":
        return image.convert("RGB")
    if mode == "qwen_vl_utils":
        from qwen_vl_utils.vision_process import to_rgb as qwen_to_rgb

        return qwen_to_rgb(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        return _gray_to_rgb(_scale_to_uint8(values, values.min(), values.max()))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class NotARegularFile(OSError):
    """A FIFO, device, socket or directory where a file was expected."""


def check_regular_file(path: str | Path) -> Path:
    """``path`` if it is a regular file (symlinks followed); otherwise an ``OSError``
    naming what it is, raised without opening it (a FIFO would block a reader forever)."""
    path = Path(path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a directory"
            if stat.S_ISDIR(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise NotARegularFile(f"{path} is {kind}, not a regular file; refusing to read it")
    return path


class ImageChanged(DataError):
    """An image's bytes differ from the sha256 they were checked against."""


def load_image(
    path: str | Path, mode: str = "composite", expected_sha256: str | None = None
) -> Image.Image:
    """Open ``path`` (PNG, JPEG, TIFF, ... or DICOM) as an 8-bit RGB PIL image, converted
    by ``mode`` (:func:`to_rgb`; a DICOM file is windowed the same way in every mode:
    the authors' code cannot read DICOM). With ``expected_sha256``, the very bytes decoded
    must have that hash (:class:`ImageChanged` naming the file and both hashes otherwise):
    a file changed after it was checked is never used."""
    path = check_regular_file(path)
    data = path.read_bytes()
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise ImageChanged(
                f"{path} changed after it was checked: sha256 {expected_sha256} expected, "
                f"{actual} now"
            )
    if path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(io.BytesIO(data))
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return to_rgb(image, mode)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` in pixels, reading only the header where the format allows."""
    path = check_regular_file(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        dataset = read_dicom_dataset(path, stop_before_pixels=True)
        return int(dataset.Columns), int(dataset.Rows)
    with Image.open(path) as image:
        return image.size
