"""Opening an image file or encoded frame without trusting its header: size caps and a completeness check.

Pillow decodes lazily and forgives a lot. Two things it lets through are refused here, naming the file:
- a decompression bomb: a header that claims more than `max_pixels` pixels (default `MAX_PIXELS`, 64 Mpx, far
  above any dataset image; a 10000 x 10000 header is refused before any pixel is decoded). Pillow's own guard
  (`Image.MAX_IMAGE_PIXELS`) only warns below twice its limit; ours is an error.
- a truncated image: `ImageFile.LOAD_TRUNCATED_IMAGES` must stay False (Pillow then raises when the data ends
  early), and a PNG whose compressed data ends cleanly but short of the header's rows (Pillow zero-fills the
  rest without a word) is caught by inflating its IDAT stream and comparing the byte count with the header.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

from PIL import Image, ImageFile

MAX_PIXELS = 64 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


class ImageError(ValueError):
    """An image cannot be used: unreadable, truncated or too large; the message names the file."""


def open_image(
    source: str | os.PathLike | bytes, *, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """A fully decoded RGB copy of an image file (a path, or encoded bytes named `name` in errors)."""
    label = name or (f"{len(source)} bytes of image data" if isinstance(source, bytes) else str(source))
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageError(f"{label}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on (something set it); truncated images "
                         "would be zero-filled, so none is read")
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as error:
        raise ImageError(f"{label}: cannot be read ({error.strerror or error})") from error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap, below, is an error
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(f"{label}: {width}x{height} pixels, more than max_pixels {max_pixels}; refused "
                                     "as a decompression bomb")
                if image.format == "PNG":
                    check_png_complete(data, label)
                return image.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{label}: refused as a decompression bomb ({error})") from error
    except Exception as error:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... on bad data
        raise ImageError(f"{label}: not a readable image ({type(error).__name__}: {error})") from error


def png_data_size(width: int, height: int, bit_depth: int, color_type: int, interlace: int) -> int:
    """Bytes of filtered scanlines (a filter byte per row) that a complete PNG image inflates to."""
    bits_per_pixel = bit_depth * PNG_CHANNELS[color_type]
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        pass_width = max(0, -(-(width - x0) // dx))
        pass_height = max(0, -(-(height - y0) // dy))
        if pass_width and pass_height:
            total += pass_height * (1 + -(-(pass_width * bits_per_pixel) // 8))
    return total


def check_png_complete(data: bytes, label: str) -> None:
    """Raise ImageError when a PNG's image data inflates to fewer bytes than its header's size needs."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33:
        raise ImageError(f"{label}: not a PNG file")
    width, height, bit_depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if color_type not in PNG_CHANNELS:
        raise ImageError(f"{label}: PNG colour type {color_type} is not valid")
    expected = png_data_size(width, height, bit_depth, color_type, interlace)
    inflater, produced, position = zlib.decompressobj(), 0, 8
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IDAT":
            chunk = data[position + 8 : position + 8 + length]
            while chunk and produced <= expected:
                produced += len(inflater.decompress(chunk, 1 << 20))
                chunk = inflater.unconsumed_tail
        elif kind == b"IEND":
            break
        position += 12 + length
    if produced < expected:
        raise ImageError(f"{label}: truncated PNG: its data holds {produced} of the {expected} bytes that "
                         f"{width}x{height} pixels need")
