"""Uploaded files -> a uint8 (N, C, H, W) batch: small images on the event loop, large ones in a pool."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from rbn.bundle import InputSpec
from service.config import Settings
from service.errors import ServiceError
from service.imaging import open_image, render
from service.runtime import available_cpus


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its bytes and, for multipart uploads, its file name."""

    data: bytes
    filename: str | None = None


class Decoder:
    """Decodes uploads for every model; one per service (it owns the decode threads)."""

    def __init__(self, settings: Settings) -> None:
        self.max_pixels = settings.max_image_pixels
        self.inline_pixels = settings.inline_decode_pixels
        threads = settings.decode_threads or max(1, min(4, available_cpus()))
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    async def decode(self, uploads: list[Upload], spec: InputSpec) -> np.ndarray:
        """uint8 (N, C, H, W) for ``spec``; an error names the file when there are several."""
        out = np.empty((len(uploads), spec.channels, spec.height, spec.width), np.uint8)
        heavy = []
        for i, upload in enumerate(uploads):
            try:
                image = open_image(upload.data, self.max_pixels)
                if image.width * image.height <= self.inline_pixels:
                    out[i] = render(image, spec)
                else:
                    heavy.append((i, image))
            except ServiceError as exc:
                raise _for_file(exc, i, upload, len(uploads)) from None
        if heavy:
            loop = asyncio.get_running_loop()
            done = await asyncio.gather(*(loop.run_in_executor(self.pool, render, image, spec) for _, image in heavy),
                                        return_exceptions=True)
            for (i, _), pixels in zip(heavy, done, strict=True):
                if isinstance(pixels, ServiceError):
                    raise _for_file(pixels, i, uploads[i], len(uploads))
                if isinstance(pixels, BaseException):
                    raise pixels
                out[i] = pixels
        return out

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _for_file(exc: ServiceError, index: int, upload: Upload, count: int) -> ServiceError:
    """The same error, naming the file when the request holds several or the file has a name."""
    if count == 1 and upload.filename is None:
        return exc
    name = f" ({upload.filename})" if upload.filename else ""
    return type(exc)(f"file {index}{name}: {exc.message}", exc.headers)
