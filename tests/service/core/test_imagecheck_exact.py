"""service.core.imagecheck on files built byte by byte: every cap exactly at its value (passes) and one
past (refused, with its message), the walks' edges (a piece in the file's last bytes, a length past the
end, a header cut short), what does not count (stuffed bytes, restart markers, fill, anything after the
end marker), and which files are *plain*. The caps are written here as numbers, not read from the module."""

from __future__ import annotations

import struct
import zlib

import pytest

from service.core import imagecheck
from service.core.errors import CorruptImage, UndecodableImage
from service.core.imagecheck import check


def refused(data: bytes) -> str:
    with pytest.raises(CorruptImage) as caught:
        check(data)
    assert caught.value.status == 422
    return caught.value.message


def too_many(cap: int, kind: str) -> str:
    return f"image has more than {cap} {kind}; refused before decoding"


def test_the_caps_are_the_documented_numbers():
    assert (imagecheck.MAX_PNG_CHUNKS, imagecheck.MAX_JPEG_MARKERS, imagecheck.MAX_GIF_BLOCKS) == (4096, 256, 4096)
    assert (imagecheck.MAX_TIFF_PIECES, imagecheck.MAX_TIFF_TAGS, imagecheck.MAX_JPEG_SCANS) == (8192, 1024, 64)
    assert (imagecheck.MAX_JPEG_FILL, imagecheck.MAX_PNG_METADATA_BYTES, imagecheck.MAX_TIFF_VALUES) == (256, 1 << 20, 1 << 18)


# --- PNG ---------------------------------------------------------------------------------------------

SIG = b"\x89PNG\r\n\x1a\n"
MIB = 1 << 20


def chunk(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


IHDR = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
IEND = chunk(b"IEND")
TEXT = chunk(b"tEXt", b"k\0v")


def png(*chunks: bytes, end: bytes = IEND) -> bytes:
    return SIG + IHDR + b"".join(chunks) + end


def ztxt(inflated: int, keyword: bytes = b"k", kind: bytes = b"zTXt") -> bytes:
    """A zTXt (or iCCP) chunk whose text inflates to ``inflated`` bytes."""
    return chunk(kind, keyword + b"\0\0" + zlib.compress(b"\0" * inflated, 9))


def itxt(inflated: int, language: bytes = b"en", translated: bytes = b"x", flag: int = 1) -> bytes:
    """iTXt: keyword NUL flag method language NUL translated NUL text (compressed when flag is 1)."""
    text = zlib.compress(b"\0" * inflated, 9)
    return chunk(b"iTXt", b"key\0" + bytes([flag, 0]) + language + b"\0" + translated + b"\0" + text)


def test_png_chunks_up_to_4096_pass_and_the_4097th_is_refused():
    assert check(png(*[TEXT] * 4094)) is True  # IHDR + 4094 + IEND = 4096
    assert refused(png(*[TEXT] * 4095)) == too_many(4096, "PNG chunks")


def test_a_chunk_header_in_the_last_8_bytes_counts():
    header_only = struct.pack(">I4s", 0, b"tEXt")  # 8 bytes: a chunk header, nothing after it
    assert check(png(*[TEXT] * 4094, end=header_only)) is True  # 1 + 4094 + 1 = 4096
    assert refused(png(*[TEXT] * 4095, end=header_only)) == too_many(4096, "PNG chunks")
    assert check(png(*[TEXT] * 4095, end=header_only[:7])) is True  # 7 bytes are not a header


def test_a_png_that_ends_on_a_chunk_boundary_without_iend_is_plain():
    assert check(SIG + IHDR) is True
    assert check(SIG) is True


def test_a_chunk_length_past_the_end_ends_the_walk():
    assert check(png(end=struct.pack(">I4s", 0x8000_0000, b"tEXt") + b"x" * 20)) is True
    assert check(png(end=struct.pack(">I4s", 0xFFFF_FFFF, b"tEXt") + b"x" * 20)) is True


def test_nothing_after_iend_counts():
    assert check(png(TEXT, end=IEND + ztxt(100) + TEXT * 5000)) is True
    assert check(png(ztxt(100), end=IEND + TEXT * 5000)) is False


def test_plain_is_no_compressed_metadata():
    assert check(png()) is True
    assert check(png(TEXT)) is True
    assert check(png(chunk(b"iTXt", b"key\0\0\0en\0x\0text"))) is False  # any iTXt, even uncompressed
    assert check(png(ztxt(10))) is False
    assert check(png(ztxt(10, kind=b"iCCP"))) is False
    assert check(png(itxt(10))) is False


@pytest.mark.parametrize("make", [
    lambda n: ztxt(n),
    lambda n: ztxt(n, kind=b"iCCP"),
    lambda n: ztxt(n, keyword=b""),  # an empty keyword: Pillow still inflates the text
    lambda n: itxt(n),
    lambda n: itxt(n, language=b"", translated=b""),
    lambda n: itxt(n, language=b"en-GB", translated=b""),
    lambda n: itxt(n, language=b"", translated=b"Titel"),
])  # fmt: skip
def test_compressed_metadata_up_to_1_mib_passes_one_byte_more_is_refused(make):
    assert check(png(make(MIB))) is False
    message = refused(png(make(MIB + 1)))
    assert message == ("the PNG's compressed metadata (zTXt, iTXt, iCCP) inflates to more than 1048576 bytes; "
                       "refused before decoding")


def test_the_metadata_budget_is_shared_by_the_chunks():
    assert check(png(ztxt(MIB // 2), itxt(MIB // 4), ztxt(MIB // 4, kind=b"iCCP"))) is False
    refused(png(ztxt(MIB // 2), itxt(MIB // 4), ztxt(MIB // 4 + 1, kind=b"iCCP")))


@pytest.mark.parametrize("free", [
    chunk(b"zTXt", b"keyword without a NUL"),
    chunk(b"zTXt", b"k\0\0not a zlib stream"),
    chunk(b"iTXt", b"key\0\0\0en\0x\0" + zlib.compress(b"\0" * 100)),  # uncompressed (flag 0): not inflated
    chunk(b"iTXt", b"key\0\x01\0en"),  # no NUL after the language
    chunk(b"iTXt", b"key\0\x01\0en\0x"),  # no NUL after the translated keyword
    chunk(b"iTXt", b"key\0"),  # nothing after the keyword
    chunk(b"iTXt", b"key"),  # no keyword end at all
])  # fmt: skip
def test_metadata_pillow_skips_costs_nothing_of_the_budget(free):
    assert check(png(free, ztxt(MIB))) is False  # the whole budget is still there


def test_an_itxt_without_a_language_terminator_is_not_inflated_whatever_follows():
    """After the keyword: flag 0x78, method 0xDA, then no NUL at all: no language field, so nothing is inflated,
    though those bytes happen to be a whole zlib stream (of 23 bytes) that would pass the 10 left of the budget."""
    stream = zlib.compress(b"hello hello hello hello", 9)
    assert b"\0" not in stream and stream[:2] == b"\x78\xda" and len(zlib.decompress(stream)) == 23
    assert check(png(ztxt(MIB - 10), chunk(b"iTXt", b"k\0" + stream))) is False


def test_an_uncompressed_itxt_whose_text_looks_like_zlib_is_not_inflated():
    assert check(png(itxt(2 * MIB, flag=0))) is False  # not refused; not plain (an iTXt)


def test_a_chunks_body_ends_where_its_length_says():
    """A stored (level 0) stream of 1 MiB + 1 bytes cut before its last byte and its checksum inflates to
    exactly 1 MiB: within the budget. The chunk's CRC follows it; read as one more byte, it would make 1 MiB + 1."""
    cut = zlib.compress(b"\x07" * (MIB + 1), 0)[:-5]
    assert len(zlib.decompressobj().decompress(cut)) == MIB
    assert check(png(chunk(b"zTXt", b"k\0\0" + cut))) is False


# --- JPEG --------------------------------------------------------------------------------------------

SOI, EOI = b"\xff\xd8", b"\xff\xd9"


def seg(marker: int, payload: bytes = b"") -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


APP0 = seg(0xE0)  # 4 bytes
DQT = seg(0xDB, b"\0" * 5)
SOS = seg(0xDA, b"\x01\x01\x00\x00\x3f\x00")
SCAN = b"\x12\x34\x56\x78" * 4  # entropy-coded data without 0xFF
DHT = b"\xff\xc4"


def jpeg(*parts: bytes) -> bytes:
    return SOI + b"".join(parts)


def progressive(*before: bytes) -> bytes:
    return jpeg(*before, SOS, SCAN, SOS, SCAN, EOI)


def test_jpeg_markers_before_the_first_scan_up_to_256_pass():
    assert check(jpeg(*[APP0] * 255, SOS, SCAN, EOI)) is True  # 255 + the scan's own = 256
    assert refused(jpeg(*[APP0] * 256, SOS, SCAN, EOI)) == too_many(256, "JPEG markers before the first scan")
    assert check(jpeg(*[APP0] * 256)) is True  # no scan at all
    # the 257th marker is the file's last four bytes: still counted
    assert refused(jpeg(*[APP0] * 257)) == too_many(256, "JPEG markers before the first scan")


def test_a_jpeg_walk_that_meets_no_marker_or_the_end_passes():
    assert check(SOI + b"\x00\x00\x00\x00" + SOS + SCAN + SOS) is True  # not a marker: Pillow will say
    assert check(jpeg(APP0)) is True
    assert check(SOI) is True
    assert check(jpeg(APP0) + b"\xff\xe0\x00") is True  # three bytes left: not a segment


def test_one_scan_is_plain_two_are_not():
    assert check(jpeg(DQT, SOS, SCAN, EOI)) is True
    assert check(progressive(DQT)) is False


@pytest.mark.parametrize("marker", [0xD0, 0xD3, 0xD7, 0xD8, 0xD9, 0x01])
def test_markers_without_a_length_are_stepped_over(marker):
    """RSTn, SOI, EOI and TEM have no length field: read as one, the next bytes (FF E0) would jump past the
    end and the progressive scans after them would go unseen."""
    assert check(progressive(bytes([0xFF, marker]), APP0)) is False
    assert check(progressive(bytes([0xFF, marker]) * 250, APP0)) is False  # 250 + APP0 + SOS = 252 markers


def test_a_segment_length_is_unsigned():
    assert check(jpeg(b"\xff\xe0\xff\xfc") + b"\0" * 8) is True  # 65532 bytes on: past the end


def test_every_marker_after_the_scans_own_two_bytes_counts():
    """A 0xFF right after the first scan's marker (its length field's first byte) starts a marker too."""
    assert check(jpeg(b"\xff\xda\xff\xc4", DHT * 255, EOI)) is True  # C4 + 255 = 256 markers after the scan
    assert refused(jpeg(b"\xff\xda\xff\xc4", DHT * 256, EOI)) == too_many(256, "JPEG markers after the first scan")


def test_fill_bytes_up_to_256_pass_in_all():
    assert check(progressive(b"\xff" * 256, APP0)) is False  # 256 fill bytes, then the walk goes on
    assert refused(progressive(b"\xff" * 257, APP0)) == too_many(256, "JPEG fill bytes")
    assert check(progressive(b"\xff" * 128, APP0, b"\xff" * 128, APP0)) is False
    assert refused(progressive(b"\xff" * 200, APP0, b"\xff" * 200, APP0)) == too_many(256, "JPEG fill bytes")
    assert refused(jpeg(b"\xff" * 1_000_000, APP0)) == too_many(256, "JPEG fill bytes")


def test_jpeg_scans_up_to_64_pass_and_the_65th_is_refused():
    assert check(jpeg(SOS, SCAN, *[SOS, SCAN] * 63, EOI)) is False
    assert refused(jpeg(SOS, SCAN, *[SOS, SCAN] * 64, EOI)) == too_many(64, "JPEG scans")
    # the 65th scan's marker is the file's last two bytes: still counted
    assert refused(jpeg(SOS, SCAN, *[SOS, SCAN] * 63, b"\xff\xda")) == too_many(64, "JPEG scans")


def test_markers_after_the_first_scan_up_to_256_pass():
    assert check(jpeg(SOS, SCAN, DHT * 256, EOI)) is True
    assert refused(jpeg(SOS, SCAN, DHT * 257, EOI)) == too_many(256, "JPEG markers after the first scan")
    assert refused(jpeg(SOS, SCAN, b"\xff\xcf" * 257, EOI)) == too_many(256, "JPEG markers after the first scan")
    assert refused(jpeg(SOS, SCAN, b"\xff\xd8" * 257, EOI)) == too_many(256, "JPEG markers after the first scan")


def test_stuffed_bytes_restart_markers_and_fill_are_not_markers():
    data = (b"\xff\x00" * 300 + b"".join(bytes([0xFF, 0xD0 + i]) * 300 for i in range(8))
            + b"\xff" * 600 + b"\xc4")  # a run of 0xFF, then one marker: C4
    assert check(jpeg(SOS, SCAN, data, EOI)) is True  # one scan, one marker after it


def test_nothing_after_the_end_of_image_counts():
    assert check(jpeg(SOS, SCAN, EOI, DHT * 300)) is True
    assert check(jpeg(SOS, SCAN, EOI, *[SOS, SCAN] * 100)) is True


# --- GIF ---------------------------------------------------------------------------------------------

IMAGE = b"\x2c" + b"\0" * 9 + b"\x3b"  # an image descriptor (then the trailer)


def gif(blocks: bytes, flags: int = 0, version: bytes = b"GIF89a", tail: bytes = IMAGE) -> bytes:
    table = b"\0" * (3 * 2 ** ((flags & 7) + 1)) if flags & 0x80 else b""
    return version + struct.pack("<HH", 1, 1) + bytes([flags, 0, 0]) + table + blocks + tail


def extension(subblocks: int) -> bytes:
    """A comment extension of ``subblocks`` one-byte sub-blocks and its terminator: subblocks + 1 blocks."""
    return b"\x21\xfe" + b"\x01\x00" * subblocks + b"\x00"


@pytest.mark.parametrize("version", [b"GIF87a", b"GIF89a"])
@pytest.mark.parametrize("flags", [0x00, 0x07, 0x80, 0x82, 0x87])  # no table; tables of 6, 24 and 768 bytes
def test_gif_blocks_up_to_4096_pass_and_the_4097th_is_refused(version, flags):
    assert check(gif(extension(2047) + extension(2047), flags, version)) is True
    assert refused(gif(extension(2047) + extension(2048), flags, version)) == too_many(
        4096, "GIF extension blocks before the first image")


def test_the_image_descriptor_ends_the_gif_walk():
    assert check(gif(extension(10), tail=IMAGE + extension(5000))) is True


@pytest.mark.parametrize("data", [
    b"GIF89a" + b"\0" * 6,  # 12 bytes: no screen descriptor
    b"GIF89a" + b"\0" * 7,  # 13 bytes, nothing after it
    gif(extension(3), tail=b""),  # ends after an extension's terminator
    gif(b"\x21\xfe\x01\x00", tail=b""),  # ends after a sub-block, before its terminator
    gif(b"\x21\xfe\x05\x00", tail=b""),  # a sub-block longer than the file
])  # fmt: skip
def test_a_gif_cut_short_passes_to_pillow(data):
    assert check(data) is True


# --- TIFF --------------------------------------------------------------------------------------------

STRIP_OFFSETS, STRIP_BYTE_COUNTS, TILE_OFFSETS, TILE_BYTE_COUNTS = 273, 279, 324, 325
SHORT, LONG = 3, 4


def tiff(entries: list[tuple[int, int, int]], layout: str = "II*", ifd: int | None = None, count: int | None = None,
         next_ifd: bool = True) -> bytes:
    """A TIFF whose first directory holds ``entries`` (tag, type, count), values zero. ``layout``: the first
    three bytes' meaning, as Pillow reads them: II* / MM0* classic (II*\\0, MM\\0*, and the variants MM*\\0,
    II\\0* and MM\\0+), II+ BigTIFF (8-byte offsets and counts, 20-byte entries)."""
    magic = {"II*": b"II*\x00", "MM0*": b"MM\x00*", "MM*": b"MM*\x00", "II0*": b"II\x00*", "MM0+": b"MM\x00+",
             "II+": b"II+\x00"}[layout]
    order = "<" if magic[:2] == b"II" else ">"
    big = magic[2] == 0x2B
    count = len(entries) if count is None else count
    if big:
        head = magic + struct.pack("<HH", 8, 0) + struct.pack("<Q", 16 if ifd is None else ifd)
        body = struct.pack("<Q", count) + b"".join(struct.pack("<HHQQ", *e, 0) for e in entries)
        return head + body + (struct.pack("<Q", 0) if next_ifd else b"")
    head = magic + struct.pack(order + "I", 8 if ifd is None else ifd)
    body = struct.pack(order + "H", count) + b"".join(struct.pack(order + "HHII", *e, 0) for e in entries)
    return head + body + (struct.pack(order + "I", 0) if next_ifd else b"")


ORDINARY = [(256, SHORT, 1), (257, SHORT, 1)]  # width and height: the tested tag is the third entry
LAYOUTS = ["II*", "MM0*", "MM*", "II0*", "MM0+", "II+"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tag", [STRIP_OFFSETS, STRIP_BYTE_COUNTS, TILE_OFFSETS, TILE_BYTE_COUNTS])
def test_tiff_strips_or_tiles_up_to_8192_pass(layout, tag):
    assert check(tiff([*ORDINARY, (tag, LONG, 8192)], layout)) is True
    assert refused(tiff([*ORDINARY, (tag, LONG, 8193)], layout)) == too_many(8192, "TIFF strips or tiles")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tiff_tags_up_to_1024_pass(layout):
    assert check(tiff([(300 + i, SHORT, 1) for i in range(1024)], layout)) is True
    assert refused(tiff([(300 + i, SHORT, 1) for i in range(1025)], layout)) == too_many(1024, "TIFF tags")


@pytest.mark.parametrize("layout", ["II*", "MM0*", "II+"])
def test_numeric_tag_values_up_to_2_to_18_pass(layout):
    assert check(tiff([*ORDINARY, (320, SHORT, 1 << 18)], layout)) is True
    assert refused(tiff([*ORDINARY, (320, SHORT, (1 << 18) + 1)], layout)) == too_many(
        1 << 18, "values in TIFF tag 320")


@pytest.mark.parametrize("kind", [1, 2, 6, 7])  # BYTE, ASCII, SBYTE, UNDEFINED: they cost what they weigh
@pytest.mark.parametrize("layout", ["II*", "II+"])
def test_byte_and_text_tags_have_no_value_cap(kind, layout):
    assert check(tiff([*ORDINARY, (700, kind, (1 << 18) + 1)], layout)) is True


def test_counts_are_unsigned():
    assert refused(tiff([*ORDINARY], count=0xFFFF)) == too_many(1024, "TIFF tags")  # 65535 tags claimed
    assert refused(tiff([*ORDINARY], "II+", count=(1 << 64) - 1)) == too_many(1024, "TIFF tags")
    assert refused(tiff([*ORDINARY], "II+", count=(1 << 16) + 1)) == too_many(1024, "TIFF tags")
    assert refused(tiff([*ORDINARY, (STRIP_OFFSETS, LONG, 0xFFFF_FFFF)])) == too_many(8192, "TIFF strips or tiles")
    assert refused(tiff([*ORDINARY, (STRIP_OFFSETS, LONG, (1 << 64) - 1)], "II+")) == too_many(
        8192, "TIFF strips or tiles")


def test_a_directory_offset_past_the_end_passes():
    flood = [*ORDINARY, (STRIP_OFFSETS, LONG, 100_000)]
    assert check(tiff(flood, ifd=0xFFFF_FFF0) + b"\xff" * 16) is True
    assert check(tiff(flood, "II+", ifd=(1 << 64) - 16) + b"\xff" * 16) is True
    assert check(tiff(flood, "II+", ifd=(1 << 32) + 16)) is True  # the high half counts
    data = tiff(flood)
    assert check(data[:4] + struct.pack("<I", len(data) - 1) + data[8:]) is True  # the count would not fit


def test_a_bare_header_is_walked_like_any_directory():
    """8 bytes (16 for BigTIFF) and a directory offset of 0: the count is read from the header itself, 'II' as a
    little-endian 16-bit count = 0x4949 = 18761 tags (BigTIFF: 8 bytes, far more)."""
    assert refused(b"II*\x00" + struct.pack("<I", 0)) == too_many(1024, "TIFF tags")
    assert refused(b"II+\x00\x08\x00\x00\x00" + struct.pack("<Q", 0)) == too_many(1024, "TIFF tags")


def test_bigtiff_counts_are_64_bit():
    assert refused(tiff([*ORDINARY, (STRIP_OFFSETS, LONG, (1 << 32) + 5)], "II+")) == too_many(
        8192, "TIFF strips or tiles")


def test_a_directory_count_in_the_last_two_bytes_is_read():
    assert refused(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2000)) == too_many(1024, "TIFF tags")


def test_short_tiff_headers_pass():
    assert check(b"II+\x00\x08\x00\x00\x00\x10\x00\x00\x00") is True  # a 12-byte BigTIFF header
    assert check(b"II*\x00\x08\x00") is True


def test_entries_past_the_end_stop_the_walk_and_the_last_whole_one_counts():
    flood = (STRIP_OFFSETS, LONG, 100_000)
    assert check(tiff([*ORDINARY, flood], count=5)[:-16]) is True  # the flood entry is cut: not read
    assert refused(tiff([*ORDINARY, flood], next_ifd=False)) == too_many(8192, "TIFF strips or tiles")
    assert refused(tiff([*ORDINARY, flood], "II+", next_ifd=False)) == too_many(8192, "TIFF strips or tiles")


# --- BMP and the rest ---------------------------------------------------------------------------------


def bmp(compression: int, size: int = 34) -> bytes:
    return (b"BM" + b"\0" * 28 + struct.pack("<I", compression)).ljust(size, b"\0")


@pytest.mark.parametrize("compression", [1, 2])  # BI_RLE8, BI_RLE4
def test_rle_bmp_is_refused_from_34_bytes_on(compression):
    for size in (34, 100):
        with pytest.raises(UndecodableImage) as caught:
            check(bmp(compression, size))
        assert caught.value.message == "RLE-compressed BMP is not accepted; send PNG, JPEG or an uncompressed BMP"
    assert check(bmp(compression)[:33]) is True  # too short to hold the field


@pytest.mark.parametrize("compression", [0, 3, 0x8000_0001])  # BI_RGB, BI_BITFIELDS, nonsense
def test_other_bmp_compressions_pass(compression):
    assert check(bmp(compression)) is True


def test_other_formats_pass_unread_and_plain():
    assert check(b"RIFF" + b"\0" * 26 + struct.pack("<I", 1)) is True  # not a BMP, though byte 30 says RLE8
    assert check(b"RIFF\x00\x00\x00\x00WEBPVP8 ") is True
    assert check(b"") is True
