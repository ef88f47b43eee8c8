"""The paper's preprocessing of one image: resize the smallest dimension to 256, crop the center 256x256.

Zeiler & Fergus, Sec. 3: "Each RGB image was preprocessed by resizing the smallest dimension to 256,
cropping the center 256x256 region, subtracting the per-pixel mean (across all images)". This module
does the first two steps and re-encodes the result as a JPEG; the mean is ``pixel_mean.py``.

Real ImageNet holds truncated files, non-images, CMYK and grayscale JPEGs and PNGs named .JPEG.
Everything PIL can decode is converted to RGB; the rest raises :class:`UnusableImage` with a reason.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Antialiased bicubic, the filter (and reducing gap) of PIL's Image.thumbnail: on a downscale its support
# widens with the scale factor, so no aliasing; reducing_gap lets libjpeg's DCT scaling do the first,
# coarse part of a large reduction while the final resize still starts from >= 2x the target size.
RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 2.0


class UnusableImage(ValueError):
    """An image that cannot be used; ``reason`` says why ('truncated: ...' or '<ExceptionType>: <message>')."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Preprocessing:
    """How every image is turned into a training sample (all of it goes into the shards' fingerprint)."""

    size: int = 256  # smaller side resized to this, then the center size x size crop
    quality: int = 90  # JPEG quality of the re-encoded crop
    subsampling: str = "4:2:0"  # chroma subsampling of the re-encoded crop (fixed so bytes are reproducible)


def center_crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centered square of side min(width, height): what survives 'resize smaller side, crop center'."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the smaller side of ``image`` to ``size`` and return the center ``size`` x ``size`` crop, in RGB.

    One resize with a source box does both steps at once: only the kept pixels are computed, and the box may
    be fractional, so the crop is exactly centered (no rounding of the intermediate size).
    """
    if image.mode not in ("RGB", "L"):
        # CMYK, palette, alpha, 16-bit: resize in RGB (alpha is dropped, as torchvision's loader does).
        image = image.convert("RGB")
    box = center_crop_box(*image.size)
    image = image.resize((size, size), RESAMPLE, box=box, reducing_gap=REDUCING_GAP)
    return image.convert("RGB") if image.mode != "RGB" else image


def decode(data: bytes, size: int) -> Image.Image:
    """Decode encoded image bytes fully, letting libjpeg decode at a reduced DCT scale when that keeps
    the smaller side >= ``REDUCING_GAP * size`` (exactly as PIL's thumbnail does).

    Raises :class:`UnusableImage` for truncated or undecodable data.
    """
    try:
        image = Image.open(io.BytesIO(data))
        target = int(size * REDUCING_GAP)
        # draft() keeps both sides >= the requested ones; ask for a square so the *smaller* side stays >= target.
        image.draft("RGB", (target, target))
        image.load()
    except UnidentifiedImageError as error:
        # PIL's message names the in-memory buffer's address; keep reasons reproducible.
        raise UnusableImage(f"{type(error).__name__}: not an image format PIL can read") from error
    except OSError as error:
        # PIL reports a short file as "image file is truncated"; LOAD_TRUNCATED_IMAGES is global state,
        # so it stays off and such a file is skipped.
        kind = "truncated" if "truncated" in str(error) else type(error).__name__
        raise UnusableImage(f"{kind}: {error}") from error
    except (ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnusableImage(f"{type(error).__name__}: {error}") from error
    return image


def encode_jpeg(image: Image.Image, quality: int, subsampling: str) -> bytes:
    """Encode an RGB image as a baseline JPEG with fixed settings (same pixels -> same bytes)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=subsampling, optimize=False)
    return buffer.getvalue()


def preprocess(data: bytes, config: Preprocessing = Preprocessing()) -> bytes:
    """Encoded image bytes (any format PIL reads) -> the paper's center crop as RGB JPEG bytes.

    Raises :class:`UnusableImage` when the bytes cannot be turned into an RGB image.
    """
    image = decode(data, config.size)
    try:
        crop = resize_center_crop(image, config.size)
    except (OSError, ValueError) as error:
        raise UnusableImage(f"{type(error).__name__}: {error}") from error
    return encode_jpeg(crop, config.quality, config.subsampling)
