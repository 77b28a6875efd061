"""Hostile request bodies, each a few MB that once cost the event loop seconds (issue #11), built
in memory with the standard library and numpy. Imported as ``tests.reliability.hostile``."""

from __future__ import annotations

import gzip
import io
import json
import struct
import zlib

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_chunk_flood(chunks: int = 300_000) -> bytes:
    """A 28x28 PNG with ``chunks`` empty private chunks before its pixels (3.6 MB at the default)."""
    ihdr = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + bytes(28) for _ in range(28)))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"zzZz", b"") * chunks
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def tiff_strip_flood(strips: int = 400_000, order: str = "<", magic: bytes | None = None) -> bytes:
    """An uncompressed 1-pixel-wide grey TIFF of ``strips`` rows, one strip per row (3.2 MB at the default), in
    Intel (``order`` "<") or Motorola (">") byte order; ``magic`` may be one of the variants Pillow also
    accepts for Motorola order (b"MM*\\x00", b"MM\\x00+")."""
    entries = [(256, 4, 1, 1), (257, 4, 1, strips), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (277, 3, 1, 1), (278, 4, 1, 1)]
    ifd_size = 2 + 12 * (len(entries) + 2) + 4
    offsets_at = 8 + ifd_size
    counts_at = offsets_at + 4 * strips
    pixels_at = counts_at + 4 * strips
    entries += [(273, 4, strips, offsets_at), (279, 4, strips, counts_at)]
    entries.sort()

    def entry(tag: int, kind: int, count: int, value: int) -> bytes:
        if kind == 3 and count == 1:  # a SHORT sits in the first two bytes of the value field
            return struct.pack(order + "HHIHH", tag, kind, count, value, 0)
        return struct.pack(order + "HHII", tag, kind, count, value)

    ifd = struct.pack(order + "H", len(entries)) + b"".join(entry(*e) for e in entries) + struct.pack(order + "I", 0)
    offsets = np.arange(pixels_at, pixels_at + strips, dtype=order + "u4").tobytes()
    counts = np.ones(strips, dtype=order + "u4").tobytes()
    magic = magic or (b"II*\x00" if order == "<" else b"MM\x00*")
    return magic + struct.pack(order + "I", 8) + ifd + offsets + counts + bytes(strips)


def gif_block_flood(blocks: int = 1_000_000) -> bytes:
    """A 1x1 GIF whose comment extension is ``blocks`` one-byte sub-blocks (2 MB at the default)."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    comment = b"\x21\xfe" + b"\x01x" * blocks + b"\x00"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + comment + image + b"\x3b"


def jpeg_marker_flood(markers: int = 500_000) -> bytes:
    """A small JPEG with ``markers`` empty comment segments before its first scan (2 MB at the default)."""
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buffer, "JPEG")
    data = buffer.getvalue()
    return data[:2] + b"\xff\xfe\x00\x02" * markers + data[2:]


def bmp_rle(side: int = 2048) -> bytes:
    """A ``side`` x ``side`` RLE8 BMP (Pillow decodes RLE in Python: seconds for 4 megapixels)."""
    row = b"".join(b"\xff\x07" for _ in range(side // 255)) + bytes([side % 255, 7]) + b"\x00\x00"
    pixels = row * side + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def big_photo(side: int = 3000) -> bytes:
    """A large noisy JPEG: legitimate, but its decode takes tens of milliseconds (the pool's job)."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def v2_gzip_bomb(megabytes: int = 15) -> bytes:
    """A gzip body that inflates to ``megabytes`` MB of JSON (about 20 KB on the wire)."""
    return gzip.compress(b'{"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ['
                         + b"0.0, " * (megabytes * 1024 * 1024 // 5) + b"0.0]}]}", 9)


def v2_big_json(images: int = 64) -> bytes:
    """A valid JSON infer request of ``images`` images (about 3 KB of text per image... x images)."""
    return json.dumps({"inputs": [{"name": "input", "shape": [images, 1, 28, 28], "datatype": "FP32",
                                   "data": [0.123456] * (images * 784)}]}).encode()


# --- issue #25: what slipped past the structure checks ------------------------------------------
def _segments(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """A JPEG -> (everything before its first scan, each scan (SOS segment and its entropy-coded data), EOI)."""
    first = data.index(b"\xff\xda")
    scans, at = [], first
    while True:
        length = struct.unpack_from(">H", data, at + 2)[0]
        pos = at + 2 + length
        while True:  # to the next marker that is not a stuffed byte or a restart marker
            pos = data.index(b"\xff", pos)
            if data[pos + 1] == 0 or 0xD0 <= data[pos + 1] <= 0xD7:
                pos += 2
                continue
            break
        scans.append(data[at:pos])
        if data[pos + 1] != 0xDA:
            # tables between scans (DHT) belong to the next scan; EOI ends the file
            if data[pos + 1] == 0xD9:
                return data[:first], scans, data[pos:]
            nxt = data.index(b"\xff\xda", pos)
            scans[-1] += data[pos:nxt]
            at = nxt
        else:
            at = pos


def jpeg_scan_flood(scans: int = 20_000, side: int = 1024) -> bytes:
    """A smooth progressive JPEG whose last (12-byte) scan is repeated ``scans`` times: libjpeg works over the
    whole coefficient buffer for each, ~0.5 ms apiece here (240 KB and ~10 s of CPU at the defaults)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (100, 120, 140)).save(buffer, "JPEG", progressive=True)
    head, parts, tail = _segments(buffer.getvalue())
    return head + b"".join(parts) + parts[-1] * scans + tail


def jpeg_fill_flood(fill: int = 1_000_000) -> bytes:
    """A small JPEG with ``fill`` 0xFF fill bytes before its second marker (legal; Pillow reads them one by one in Python)."""
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buffer, "JPEG")
    data = buffer.getvalue()
    return data[:2] + b"\xff" * fill + data[2:]


def png_text_bomb(chunks: int = 15, inflated: int = 1_000_000, kind: bytes = b"zTXt") -> bytes:
    """A 28x28 PNG with ``chunks`` compressed text chunks (zTXt, or iCCP profiles) of ``inflated`` bytes each
    (about 1 KB apiece on the wire: 15 of them fit in 16 KiB, the inline-decode size)."""
    ihdr = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + bytes(28) for _ in range(28)))
    payload = zlib.compress(b"a" * inflated, 9)
    extra = b"".join(_chunk(kind, b"k%d\0\0" % i + payload) for i in range(chunks))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def bigtiff_strip_flood(strips: int = 200_000, order: str = "<") -> bytes:
    """tiff_strip_flood as a BigTIFF (8-byte offsets and counts). Pillow reads only the little-endian
    BigTIFF as one (b"MM\\x00+" it reads as a classic TIFF: ``tiff_strip_flood(order=">", magic=...)``)."""
    entries = [(256, 4, 1, 1), (257, 4, 1, strips), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (277, 3, 1, 1), (278, 4, 1, 1)]
    ifd_size = 8 + 20 * (len(entries) + 2) + 8
    offsets_at = 16 + ifd_size
    counts_at = offsets_at + 8 * strips
    pixels_at = counts_at + 8 * strips
    entries += [(273, 16, strips, offsets_at), (279, 16, strips, counts_at)]
    entries.sort()
    def entry(tag: int, kind: int, count: int, value: int) -> bytes:  # a value sits in the field's first bytes
        field = {3: "H6x", 4: "I4x", 16: "Q"}[kind] if count == 1 else "Q"
        return struct.pack(order + "HHQ" + field, tag, kind, count, value)

    ifd = struct.pack(order + "Q", len(entries)) + b"".join(entry(*e) for e in entries)
    ifd += struct.pack(order + "Q", 0)
    offsets = np.arange(pixels_at, pixels_at + strips, dtype=order + "u8").tobytes()
    counts = np.ones(strips, dtype=order + "u8").tobytes()
    magic = b"II+\x00" if order == "<" else b"MM\x00+"
    return magic + struct.pack(order + "HHQ", 8, 0, 16) + ifd + offsets + counts + bytes(strips)

