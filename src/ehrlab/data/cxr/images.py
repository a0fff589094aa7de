"""Decoding chest X-ray files into the task's cached grey image array.

Every image a task uses is decoded once, turned grey and resized to `size` x `size` uint8,
then written into one `images.npy` array that later runs memory-map (seed 004 Appendix A
resizes MIMIC-CXR-JPG to 256², aspect ratio not kept; so does this module — a portrait film
is squeezed, not cropped or padded).

What a file may hold (issue 11: "PNG or JPEG, 8- or 16-bit, grey or RGB"):
- 8-bit grey is kept as it is; RGB / palette / alpha images become grey by PIL's luma
  (ITU-R 601-2), alpha dropped.
- 16-bit (and 32-bit integer or float) images are rescaled linearly from the image's own
  minimum..maximum to 0..255. Many 16-bit radiographs store 12 bits, so dividing by 65,535
  would leave them nearly black; the image's own range brings every file to full contrast.
- Resizing uses Pillow's bilinear filter, which widens its support when shrinking (an
  antialiased, area-like average), so a 2,500-pixel film does not alias at 256.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ehrlab.errors import UserInputError

# Decoding many files is I/O plus Pillow C code that releases the GIL: a few threads help.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
# Paths handed to the thread pool at a time, so a huge image list never queues all at once.
_CHUNK = 64
_EIGHT_BIT_MODES = {"L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1", "La", "RGBa", "RGBX"}


def decode_grey(path: str | Path, size: int) -> np.ndarray:
    """One image file as uint8 [size, size], grey, resized (see the module docstring).

    Raises UserInputError naming the file when it is missing, not an image, or truncated.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                # Let the JPEG decoder scale down by 1/2..1/8 while decoding (never below
                # `size`): most of the decoding time of a large film saved, the final resize
                # still antialiased.
                image.draft("L", (size, size))
            image.load()
            if image.mode in _EIGHT_BIT_MODES:
                grey = image.convert("L") if image.mode != "L" else image
                return np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
            pixels = np.asarray(image, dtype=np.float32)
    except FileNotFoundError as error:
        raise UserInputError(f"image file {path} does not exist: check the source's image paths") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UserInputError(f"image file {path} cannot be decoded ({error}): replace the file or remove its row "
                             "from the source") from error
    if pixels.ndim == 3:  # a multi-channel high-bit-depth image: average its colour channels
        pixels = pixels[..., :3].mean(axis=-1)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    resized = np.asarray(Image.fromarray(scaled.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def write_image_array(paths: Sequence[str | Path], out_path: Path, size: int, workers: int = DEFAULT_WORKERS,
                      progress: bool = True) -> None:
    """Decode every file of `paths` once into a uint8 [len(paths), size, size] .npy file.

    The array is written through `np.lib.format.open_memmap`, so tens of thousands of images
    never sit in memory at once; row i is `paths[i]`. A bad file raises UserInputError
    naming it (the caller writes into a staging folder, so nothing half-written survives).
    """
    array = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(paths), desc="decoding images", unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), _CHUNK):
            chunk = paths[start:start + _CHUNK]
            for offset, pixels in enumerate(pool.map(decode_grey, chunk, [size] * len(chunk))):
                array[start + offset] = pixels
            bar.update(len(chunk))
    array.flush()
    del array
