"""Images: a PIL image, or bytes from any source, decoded and checked into an RGB PIL image."""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

from chatplex.errors import InvalidRequestError
from chatplex.media.policy import MediaPolicy
from chatplex.media.sources import load_source

# Formats PIL decodes that real clients send; anything else (EPS runs Ghostscript, for one) is refused.
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "ICO"})


def _check_pixels(width: int, height: int, param: str, policy: MediaPolicy) -> None:
    if width * height > policy.max_image_pixels:
        raise InvalidRequestError(
            f"{param}: the image is {width}x{height}, more than {policy.max_image_pixels} pixels.", param=param
        )
    if width < 1 or height < 1:
        raise InvalidRequestError(f"{param}: the image is empty ({width}x{height}).", param=param)


def fit_pixels(image: Any, max_pixels: int | None, min_pixels: int | None) -> Any:
    """Scale a PIL image (aspect ratio kept) into [min_pixels, max_pixels], as LLaMA-Factory's plugins do."""
    for bound, too_far in ((max_pixels, lambda area, b: area > b), (min_pixels, lambda area, b: area < b)):
        area = image.width * image.height
        if bound is not None and too_far(area, bound):
            scale = math.sqrt(bound / area)
            image = image.resize((int(image.width * scale), int(image.height * scale)))
    return image


def decode_image(data: bytes, param: str, policy: MediaPolicy) -> Any:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in IMAGE_FORMATS:
                raise InvalidRequestError(
                    f"{param}: unsupported image type {image.format}; send one of {', '.join(sorted(IMAGE_FORMATS))}.",
                    param=param,
                )
            _check_pixels(image.width, image.height, param, policy)  # before decoding the pixels
            image.load()
    except InvalidRequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequestError(f"{param}: the image has too many pixels.", param=param) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...) for bad files
        raise InvalidRequestError(f"{param}: not a readable image ({type(e).__name__}: {e}).", param=param) from None
    return image.convert("RGB")


def load_image(source: Any, param: str = "image", policy: MediaPolicy | None = None, *, trusted: bool = True) -> Any:
    """An RGB PIL image from a PIL image, bytes, a data URL, an http(s) URL or a path.

    `trusted`: the source is the caller's own argument (any local path), not text from a request."""
    from PIL import Image

    policy = policy or MediaPolicy()
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, param, policy)
        image = source.convert("RGB")
    else:
        image = decode_image(load_source(source, param, policy, trusted).data, param, policy)
    return fit_pixels(image, policy.image_max_pixels, policy.image_min_pixels)
