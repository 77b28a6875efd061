"""Structure checks on uploaded image bytes, before Pillow parses them, with bounded work.

Pillow reads several formats' structure in Python, one loop turn per piece: PNG chunks, JPEG
markers, GIF blocks and sub-blocks, TIFF strips and tiles, and the rows of an RLE-compressed BMP
(a decoder written in Python). A few megabytes of tiny pieces (a PNG of a million empty chunks, a
TIFF of a million strips) cost seconds of interpreter time, which holds the GIL even in a worker
thread and so slows the event loop too. Real images have few pieces; each check walks at most
its cap of them and refuses a file that has more (422 ``corrupt_image``, naming the cap), so
opening any upload costs at most a few milliseconds of Python. Formats Pillow decodes in C
without such loops (WebP, uncompressed BMP) need no check.
"""

from __future__ import annotations

import struct

from service.core.errors import CorruptImage, UndecodableImage

MAX_PNG_CHUNKS = 4096  # libpng writes 8 KiB IDAT chunks: a 16 MiB PNG has about 2000
MAX_JPEG_MARKERS = 256  # segments before the first scan; cameras write about 10-20
MAX_GIF_BLOCKS = 4096  # extension sub-blocks before the first image
MAX_TIFF_PIECES = 8192  # strips or tiles of the first image (libtiff writes 8 KiB strips: one row each for a 4096-wide RGB image)
MAX_TIFF_TAGS = 1024


def check(data: bytes) -> None:
    """Refuse (``CorruptImage``) a PNG, JPEG, GIF or TIFF with more pieces than its cap, or an RLE BMP
    (``UndecodableImage``); other bytes pass on to Pillow unchanged."""
    head = data[:8]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        _png(data)
    elif head.startswith(b"\xff\xd8"):
        _jpeg(data)
    elif head.startswith((b"GIF87a", b"GIF89a")):
        _gif(data)
    elif head.startswith((b"II*\x00", b"MM\x00*")):
        _tiff(data)
    elif head.startswith(b"BM") and len(data) >= 34:
        compression = struct.unpack_from("<I", data, 30)[0]
        if compression in (1, 2):  # BI_RLE8, BI_RLE4: Pillow decodes them in Python
            raise UndecodableImage("RLE-compressed BMP is not accepted; send PNG, JPEG or an uncompressed BMP")


def _too_many(kind: str, cap: int) -> CorruptImage:
    return CorruptImage(f"image has more than {cap} {kind}; refused before decoding")


def _png(data: bytes) -> None:
    pos, count, end = 8, 0, len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        count += 1
        if count > MAX_PNG_CHUNKS:
            raise _too_many("PNG chunks", MAX_PNG_CHUNKS)
        if kind == b"IEND":
            return
        pos += 12 + length


def _jpeg(data: bytes) -> None:
    pos, count, end = 2, 0, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return  # not a marker: Pillow reports the broken file
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        count += 1
        if count > MAX_JPEG_MARKERS:
            raise _too_many("JPEG markers before the first scan", MAX_JPEG_MARKERS)
        if marker == 0xDA:  # start of scan: libjpeg reads the rest, in C
            return
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]


def _gif(data: bytes) -> None:
    end = len(data)
    if end < 13:
        return
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    count = 0
    while pos < end:
        block = data[pos]
        if block != 0x21:  # an image descriptor (0x2C), the trailer, or garbage: Pillow takes it from here
            return
        pos += 2  # extension introducer and label
        while pos < end:  # sub-blocks, ended by a zero length
            size = data[pos]
            count += 1
            if count > MAX_GIF_BLOCKS:
                raise _too_many("GIF extension blocks before the first image", MAX_GIF_BLOCKS)
            pos += 1 + size
            if size == 0:
                break


_TIFF_PIECES = {273, 279, 324, 325}  # StripOffsets, StripByteCounts, TileOffsets, TileByteCounts


def _tiff(data: bytes) -> None:
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    if ifd + 2 > len(data):
        return
    entries = struct.unpack_from(order + "H", data, ifd)[0]
    if entries > MAX_TIFF_TAGS:
        raise _too_many("TIFF tags", MAX_TIFF_TAGS)
    for i in range(entries):
        at = ifd + 2 + 12 * i
        if at + 12 > len(data):
            return
        tag, _, count = struct.unpack_from(order + "HHI", data, at)
        if tag in _TIFF_PIECES and count > MAX_TIFF_PIECES:
            raise _too_many("TIFF strips or tiles", MAX_TIFF_PIECES)
