"""Structure checks on uploaded image bytes, before Pillow parses them, with bounded work.

Pillow reads several formats' structure in Python, one loop turn per piece: PNG chunks, JPEG
markers, GIF blocks and sub-blocks, TIFF strips and tiles, and the rows of an RLE-compressed BMP
(a decoder written in Python). A few megabytes of tiny pieces (a PNG of a million empty chunks, a
TIFF of a million strips) cost seconds of interpreter time, which holds the GIL even in a worker
thread and so slows the event loop too. Real images have few pieces; each check walks at most
its cap of them and refuses a file that has more (422 ``corrupt_image``, naming the cap), so
opening any upload costs at most a few milliseconds of Python. Formats Pillow decodes in C
without such loops (WebP, uncompressed BMP) need no check.

The same walk bounds the C work of decoding that does not grow with the pixels (#25): the scans of a
progressive JPEG (libjpeg runs over the whole coefficient buffer once per scan: a JPEG of 20 000
repeated 12-byte scans is 240 KB and ~10 s of CPU), the 0xFF fill bytes before a JPEG marker (Pillow
reads them one at a time in Python), and the compressed metadata of a PNG (zTXt, iTXt, iCCP: Pillow
inflates up to 64 MB of it), inflated here at most ``MAX_PNG_METADATA_BYTES`` in all. Every header
form Pillow accepts for TIFF is walked: both byte orders, the two "invalid" magic variants it also
reads, and BigTIFF (as Pillow tells them apart: BigTIFF when the third byte is 0x2B).

``check`` returns whether the file is *plain* (no progressive scans, no compressed metadata): only a
plain small file is decoded on the event loop (``service.core.decoding``).
"""

from __future__ import annotations

import re
import struct
import zlib

import numpy as np

from service.core.errors import CorruptImage, UndecodableImage

MAX_PNG_CHUNKS = 4096  # libpng writes 8 KiB IDAT chunks: a 16 MiB PNG has about 2000
MAX_JPEG_MARKERS = 256  # segments before the first scan; cameras write about 10-20
MAX_GIF_BLOCKS = 4096  # extension sub-blocks before the first image
MAX_TIFF_PIECES = 8192  # strips or tiles of the first image (libtiff writes 8 KiB strips: one row each for a 4096-wide RGB image)
MAX_TIFF_TAGS = 1024
MAX_JPEG_SCANS = 64  # libjpeg's progressive modes write 6-10 scans, mozjpeg's up to ~20; baseline files have 1 per component
MAX_JPEG_FILL = 256  # 0xFF fill bytes before markers, in all (encoders write none)
MAX_PNG_METADATA_BYTES = 1024 * 1024  # zTXt/iTXt/iCCP inflated, in all (an ICC profile is 0.5-3 KB, rarely 0.5 MB)
MAX_TIFF_VALUES = 1 << 18  # values of one numeric TIFF tag (a 16-bit ColorMap has 3 x 65536)

_PNG_COMPRESSED = {b"zTXt": 0, b"iCCP": 0, b"iTXt": 1}  # chunk -> its fields' layout (see _png_metadata)
_FILL = re.compile(rb"\xff+")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"MM*\x00", b"II\x00*", b"MM\x00+", b"II+\x00")  # PIL.TiffImagePlugin.PREFIXES


def check(data: bytes) -> bool:
    """Refuse (``CorruptImage``) a PNG, JPEG, GIF or TIFF with more pieces than its cap, or an RLE BMP
    (``UndecodableImage``); other bytes pass on to Pillow unchanged. True when the file is plain (its
    decoding costs what its pixels cost: see the module's docstring)."""
    head = data[:8]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(data)
    if head.startswith(b"\xff\xd8"):
        return _jpeg(data)
    if head.startswith((b"GIF87a", b"GIF89a")):
        _gif(data)
    elif head.startswith(_TIFF_MAGIC):
        _tiff(data)
    elif head.startswith(b"BM") and len(data) >= 34:
        compression = struct.unpack_from("<I", data, 30)[0]
        if compression in (1, 2):  # BI_RLE8, BI_RLE4: Pillow decodes them in Python
            raise UndecodableImage("RLE-compressed BMP is not accepted; send PNG, JPEG or an uncompressed BMP")
    return True


def _too_many(kind: str, cap: int) -> CorruptImage:
    return CorruptImage(f"image has more than {cap} {kind}; refused before decoding")


def _png(data: bytes) -> bool:
    pos, count, end = 8, 0, len(data)
    budget, plain = MAX_PNG_METADATA_BYTES, True
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        count += 1
        if count > MAX_PNG_CHUNKS:
            raise _too_many("PNG chunks", MAX_PNG_CHUNKS)
        if kind == b"IEND":
            break
        if kind in _PNG_COMPRESSED:
            plain = False
            budget -= _png_metadata(kind, data[pos + 8: pos + 8 + length], budget)
        pos += 12 + length
    return plain


def _png_metadata(kind: bytes, body: bytes, budget: int) -> int:
    """Bytes a compressed PNG metadata chunk inflates to (at most ``budget`` + 1 are inflated, in C);
    ``CorruptImage`` beyond the budget."""
    keyword_end = body.find(b"\0")
    if keyword_end < 0:
        return 0  # Pillow skips a malformed chunk
    at = keyword_end + 2  # keyword, NUL, compression method
    if kind == b"iTXt":  # keyword NUL flag method language NUL translated NUL text
        if keyword_end + 1 >= len(body) or body[keyword_end + 1] == 0:
            return 0  # uncompressed text: costs what its bytes cost
        language_end = body.find(b"\0", keyword_end + 3)
        translated_end = body.find(b"\0", language_end + 1) if language_end >= 0 else -1
        if translated_end < 0:
            return 0
        at = translated_end + 1
    try:
        size = len(zlib.decompressobj().decompress(body[at:], budget + 1))
    except zlib.error:
        return 0  # Pillow refuses or skips it
    if size > budget:
        raise CorruptImage(f"the PNG's compressed metadata (zTXt, iTXt, iCCP) inflates to more than "
                           f"{MAX_PNG_METADATA_BYTES} bytes; refused before decoding")
    return size


def _jpeg(data: bytes) -> bool:
    pos, count, fill, end = 2, 0, 0, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return True  # not a marker: Pillow reports the broken file
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes: a run of 0xFF before the marker
            run = _FILL.match(data, pos, pos + MAX_JPEG_FILL + 2).end() - pos - 1  # bounded: never a long match
            fill += run
            if fill > MAX_JPEG_FILL:
                raise _too_many("JPEG fill bytes", MAX_JPEG_FILL)
            pos += run
            continue
        count += 1
        if count > MAX_JPEG_MARKERS:
            raise _too_many("JPEG markers before the first scan", MAX_JPEG_MARKERS)
        if marker == 0xDA:  # start of scan: count the scans libjpeg would run
            return _jpeg_scans(data, pos)
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return True


def _jpeg_scans(data: bytes, first: int) -> bool:
    """From the first scan on: refuse more than MAX_JPEG_SCANS scans or MAX_JPEG_MARKERS markers between
    them; plain when there is a single scan. Vectorised (numpy releases the GIL over large arrays): a
    Python walk of a noisy 8 MB photo's 0xFF bytes, or a regular expression over it, held the GIL ~70 ms."""
    tail = np.frombuffer(data, np.uint8, offset=first + 2)
    at = np.flatnonzero(tail[:-1] == 0xFF)
    following = tail[at + 1]
    # a marker: 0xFF then neither a stuffed zero, a restart marker, nor another 0xFF (a fill byte)
    markers = following[(following != 0) & (following != 0xFF) & ((following < 0xD0) | (following > 0xD7))]
    ends = np.flatnonzero(markers == 0xD9)
    if len(ends):
        markers = markers[: ends[0]]  # libjpeg stops reading at the end-of-image marker
    if len(markers) > MAX_JPEG_MARKERS:
        raise _too_many("JPEG markers after the first scan", MAX_JPEG_MARKERS)
    scans = 1 + int(np.count_nonzero(markers == 0xDA))
    if scans > MAX_JPEG_SCANS:
        raise _too_many("JPEG scans", MAX_JPEG_SCANS)
    return scans == 1


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
    """The first image's directory, as Pillow reads it: byte order from the first two bytes, BigTIFF
    (8-byte counts and offsets, 20-byte entries) when the third byte is 0x2B."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2] == 0x2B
    if len(data) < (16 if big else 8):
        return
    ifd = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
    count_size, entry_size = (8, 20) if big else (2, 12)
    if ifd + count_size > len(data):
        return
    entries = struct.unpack_from(order + ("Q" if big else "H"), data, ifd)[0]
    if entries > MAX_TIFF_TAGS:
        raise _too_many("TIFF tags", MAX_TIFF_TAGS)
    entry = order + ("HHQ" if big else "HHI")
    for i in range(entries):
        at = ifd + count_size + entry_size * i
        if at + entry_size > len(data):
            return
        tag, kind, count = struct.unpack_from(entry, data, at)
        if tag in _TIFF_PIECES and count > MAX_TIFF_PIECES:
            raise _too_many("TIFF strips or tiles", MAX_TIFF_PIECES)
        if kind not in (1, 2, 6, 7) and count > MAX_TIFF_VALUES:  # bytes, text and undefined cost what they weigh
            raise _too_many(f"values in TIFF tag {tag}", MAX_TIFF_VALUES)
