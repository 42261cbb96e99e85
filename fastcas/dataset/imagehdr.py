"""Image headers without decoding: format, stored and displayed size, validity, pixel limit.

Used wherever fastcas needs an image's geometry before (or instead of) decoding it: the
loader's source draws crop windows on the *displayed* size, ``fastcas index`` records sizes
of foreign shards, ``fastcas shard`` refuses decompression bombs. Pure Python, no decoder:
reading a header touches at most the first marker segments and the end of the buffer.

* JPEG: SOF gives the stored size; an APP1 ``Exif`` segment's IFD0 tag 0x0112 gives the
  orientation (both TIFF byte orders). Orientations 5-8 transpose the image, so the displayed
  size is (height, width). DALI's decoders apply the EXIF orientation (checked in
  ``tests/test_imagehdr.py``), so crop windows must be drawn on the displayed size.
* PNG: IHDR. WebP: VP8 / VP8L / VP8X. Their orientation is taken as 1 (PNG ``eXIf`` and
  WebP EXIF chunks are not read).

Validity mirrors what the decoder accepts rather than a stricter rule: a JPEG is complete
when an EOI marker follows its first SOS segment, *wherever* it is; bytes after EOI (camera
and phone trailers, appended thumbnails) are fine. A PNG needs its IEND chunk, a WebP its
declared RIFF length.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

# The same threshold at which PIL raises DecompressionBombError (2 x Image.MAX_IMAGE_PIXELS =
# 2 x 89,478,485), so what `fastcas shard` (PIL) accepts, the loader accepts: ~179 MP, e.g.
# 13,377 x 13,377. A 20000 x 20000 header-only bomb (400 MP) is over it.
DEFAULT_MAX_PIXELS = 178_956_970

FORMATS = ("jpeg", "png", "webp")
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class ImageHeader(NamedTuple):
    format: str       # "jpeg" | "png" | "webp"
    width: int        # stored (coded) size
    height: int
    orientation: int  # EXIF orientation 1..8 (1 when absent or not read)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown, after EXIF orientation: 5-8 swap the axes."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)

    @property
    def pixels(self) -> int:
        return self.width * self.height


class ImageHeaderError(ValueError):
    """The bytes are not a complete JPEG / PNG / WebP; the message says why."""


def parse(buf) -> ImageHeader:
    """The header of an encoded image (bytes, memoryview or mmap slice); raises
    :class:`ImageHeaderError` for an unknown format, a truncated stream or a zero size."""
    b = memoryview(buf)
    if len(b) >= 3 and b[0] == 0xFF and b[1] == 0xD8 and b[2] == 0xFF:
        return _jpeg(b)
    if bytes(b[:8]) == _PNG_SIG:
        return _png(b)
    if len(b) >= 16 and bytes(b[:4]) == b"RIFF" and bytes(b[8:12]) == b"WEBP":
        return _webp(b)
    raise ImageHeaderError(f"not a JPEG, PNG or WebP image (starts with {bytes(b[:8])!r})")


def read(buf) -> ImageHeader | None:
    """:func:`parse`, or None where the bytes are not a complete supported image."""
    try:
        return parse(buf)
    except ImageHeaderError:
        return None


def check_pixels(header: ImageHeader, max_pixels: int | None, what: str = "image") -> None:
    """Raise :class:`ImageHeaderError` when ``header`` declares more than ``max_pixels``
    pixels (a decompression bomb); ``None`` disables the check."""
    if max_pixels is not None and header.pixels > max_pixels:
        raise ImageHeaderError(f"{what} declares {header.width}x{header.height} = {header.pixels:,} pixels, "
                               f"over the limit of {max_pixels:,} (decompression bomb?)")


# -- JPEG --------------------------------------------------------------------------------------
def _jpeg(b: memoryview) -> ImageHeader:
    n = len(b)
    i, size, orientation = 2, None, 1
    while True:
        if i + 4 > n:
            raise ImageHeaderError("truncated JPEG (ends inside its headers)")
        if b[i] != 0xFF:
            raise ImageHeaderError(f"corrupt JPEG (no marker at byte {i})")
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if marker == 0xD9:
            raise ImageHeaderError("corrupt JPEG (EOI before any scan)")
        (length,) = struct.unpack(">H", b[i + 2 : i + 4])
        if length < 2:
            raise ImageHeaderError(f"corrupt JPEG (segment length {length} at byte {i})")
        seg = b[i + 4 : i + 2 + length]
        if marker == 0xE1 and orientation == 1 and bytes(seg[:6]) == b"Exif\0\0":
            orientation = _exif_orientation(seg[6:])
        elif marker in _SOF and size is None:
            if len(seg) < 5:
                raise ImageHeaderError("truncated JPEG (inside its frame header)")
            h, w = struct.unpack(">HH", seg[1:5])
            if not (w and h):
                raise ImageHeaderError(f"JPEG declares a zero size ({w}x{h})")
            size = (w, h)
        elif marker == 0xDA:  # start of scan: entropy-coded data follows
            if size is None:
                raise ImageHeaderError("corrupt JPEG (scan before a frame header)")
            if not _has_eoi(b, i + 2 + length):
                raise ImageHeaderError("truncated JPEG (no end-of-image marker after its scan data)")
            return ImageHeader("jpeg", size[0], size[1], orientation)
        i += 2 + length


def _has_eoi(b: memoryview, start: int) -> bool:
    # Fast path: the usual file ends with EOI. Otherwise search: inside entropy-coded data
    # 0xFF is always followed by 0x00 or a RST marker, so the first FF D9 after the first
    # scan is the real end of image, and anything after it is a trailer the decoder ignores.
    n = len(b)
    if n >= start + 2 and b[n - 2] == 0xFF and b[n - 1] == 0xD9:
        return True
    return bytes(b[start:]).find(b"\xff\xd9") >= 0


def _exif_orientation(tiff: memoryview) -> int:
    """Orientation (tag 0x0112) from IFD0 of a TIFF block; 1 when absent or malformed."""
    if len(tiff) < 8:
        return 1
    order = bytes(tiff[:2])
    if order == b"II":
        e = "<"
    elif order == b"MM":
        e = ">"
    else:
        return 1
    (ifd,) = struct.unpack(e + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(e + "H", tiff[ifd : ifd + 2])
    for k in range(count):
        at = ifd + 2 + 12 * k
        if at + 12 > len(tiff):
            break
        tag, typ = struct.unpack(e + "HH", tiff[at : at + 4])
        if tag == 0x0112:
            if typ == 3:  # SHORT, stored left-aligned in the 4-byte value field
                (value,) = struct.unpack(e + "H", tiff[at + 8 : at + 10])
            elif typ == 4:  # LONG (seen in the wild)
                (value,) = struct.unpack(e + "I", tiff[at + 8 : at + 12])
            else:
                return 1
            return int(value) if 1 <= value <= 8 else 1
    return 1


# -- PNG / WebP --------------------------------------------------------------------------------
def _png(b: memoryview) -> ImageHeader:
    if len(b) < 33 or bytes(b[12:16]) != b"IHDR":
        raise ImageHeaderError("truncated PNG (no IHDR chunk)")
    w, h = struct.unpack(">II", b[16:24])
    if not (w and h):
        raise ImageHeaderError(f"PNG declares a zero size ({w}x{h})")
    if bytes(b[-12:]) != _IEND and bytes(b[33:]).find(b"IEND") < 0:
        raise ImageHeaderError("truncated PNG (no IEND chunk)")
    return ImageHeader("png", w, h, 1)


def _webp(b: memoryview) -> ImageHeader:
    (riff,) = struct.unpack("<I", b[4:8])
    if riff + 8 > len(b):
        raise ImageHeaderError(f"truncated WebP ({len(b)} bytes, RIFF header says {riff + 8})")
    chunk = bytes(b[12:16])
    if chunk == b"VP8 " and len(b) >= 30:
        if bytes(b[23:26]) != b"\x9d\x01\x2a":
            raise ImageHeaderError("corrupt WebP (bad VP8 frame start code)")
        w, h = struct.unpack("<HH", b[26:30])
        w, h = w & 0x3FFF, h & 0x3FFF
    elif chunk == b"VP8L" and len(b) >= 25:
        if b[20] != 0x2F:
            raise ImageHeaderError("corrupt WebP (bad VP8L signature)")
        (bits,) = struct.unpack("<I", b[21:25])
        w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X" and len(b) >= 30:
        w = int.from_bytes(bytes(b[24:27]), "little") + 1
        h = int.from_bytes(bytes(b[27:30]), "little") + 1
    else:
        raise ImageHeaderError(f"unsupported or truncated WebP (chunk {chunk!r})")
    if not (w and h):
        raise ImageHeaderError(f"WebP declares a zero size ({w}x{h})")
    return ImageHeader("webp", w, h, 1)
