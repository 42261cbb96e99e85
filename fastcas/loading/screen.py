"""A cheap screen for JPEG headers that the decoder is certain to reject.

DALI fails a whole batch on one undecodable sample and its pipeline must then be rebuilt
(:mod:`fastcas.loading.faults`): tens of milliseconds per bad sample, which a dataset with 1%
corrupt images pays a hundred times an epoch. Most real corruption that gets past
:mod:`fastcas.dataset.imagehdr` is in the marker segments before the first scan (bit rot in a
Huffman or quantisation table, a scan naming a component the frame lacks, a marker code that
does not exist), and libjpeg(-turbo) treats each of those as a fatal error before decoding a
pixel. :func:`jpeg_tables_error` walks the same few segments and applies exactly those rules
(``jdmarker.c``: ``get_dht``, ``get_dqt``, ``get_sof``, ``get_sos``, ``read_markers``;
``jdinput.c``: sampling factors, quantisation tables latched at a scan), so the source skips
such a sample like a truncated one, with no pipeline failure. It rejects nothing the decoder
accepts: corrupt entropy-coded data (which libjpeg only warns about) is left to the decoder,
and anything the screen misses still reaches the quarantine. Microseconds per image.

A progressive (or multi-scan) JPEG is decoded scan after scan, and libjpeg reads every marker
segment between the scans with the same fatal rules: bit rot anywhere in such a file's body
(a later scan's Huffman table, component id or band, a marker byte pair that is no marker)
fails the decoder, while in a one-scan baseline JPEG the same damage only gives warnings
(measured over DALI 2.4's CPU decoder, 1 to 4 random bytes changed after the first scan
header: 0 of 480 such baseline files refused, 446 of 1,440 progressive ones, every one of
them caught by this screen, which refused none of the other 994). So for multi-scan files
the screen walks on through the entropy-coded data to each next marker (a C-speed
regular-expression search, not a decode) and checks every later segment too, up to EOI.
"""
from __future__ import annotations

import functools
import re

# markers libjpeg's read_markers knows (anything else before the first scan is fatal:
# "Unsupported marker type"): SOFn/DHT/DAC (C0-CF), RSTn/SOI/EOI/SOS/DQT/DNL/DRI (D0-DD),
# APPn (E0-EF), COM (FE), TEM (01)
_KNOWN = set(range(0xC0, 0xD0)) | set(range(0xD0, 0xDE)) | set(range(0xE0, 0xF0)) | {0xFE, 0x01}
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# differential (hierarchical) frames and the reserved JPG marker: "Unsupported JPEG process" (jdmarker.c)
_UNSUPPORTED_SOF = {0xC5, 0xC6, 0xC7, 0xC8, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xCA}  # Huffman / arithmetic progressive frames (the others are unsupported)
_CHECKED = {0xC4, 0xDB, 0xDA, 0xDD}  # DHT, DQT, SOS, DRI (and the SOFs)
# where entropy-coded data ends: 0xFF followed by neither a stuffed 0x00, a fill 0xFF nor RSTn
# (libjpeg's entropy decoders stop there; jdhuff.c fill_bit_buffer)
_PARAMETERLESS = set(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_tables_error(buf) -> str | None:
    """Why libjpeg would refuse this JPEG's headers (a short message), or None. ``buf``: the
    encoded bytes (bytes / memoryview / uint8 array), already known to start with SOI."""
    b = memoryview(buf)
    if b.format != "B" or b.ndim != 1:
        b = b.cast("B")
    n, i = len(b), 2
    comps: dict[int, int] = {}  # component id -> quantisation table of the frame; -1: the frame type
    qtables: set[int] = set()
    huff: dict[tuple[int, int], str | None] = {}  # (class, index) -> why the table is unusable, or None
    restart, scans = 0, 0  # the restart interval (DRI); scans met so far
    while i + 4 <= n:
        if b[i] != 0xFF or (scans and b[i + 1] in _PARAMETERLESS):
            if not scans:
                return None  # imagehdr's business
            i = _scan_end(b, i + 1, 0)  # libjpeg's next_marker skips what is no marker (a warning)
            if i < 0:
                return None
            continue
        marker = b[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0xD9:
            return None  # end of image
        if marker not in _KNOWN:
            return f"unsupported marker type 0x{marker:02x} at byte {i}"
        if marker == 0xD8:
            return f"a second start-of-image marker at byte {i}"
        if marker in _UNSUPPORTED_SOF:
            return f"unsupported JPEG process: SOF type 0x{marker:02x} at byte {i}"
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = (b[i + 2] << 8) | b[i + 3]
        if i + 2 + length > n or length < 2:
            # before the first scan imagehdr says so; after it the decoder reads past the end of
            # its input to finish the segment ("Input file read error" in DALI's decoder)
            return f"segment 0x{marker:02x} at byte {i} runs past the end of the file" if scans else None
        if not (marker in _CHECKED or marker in _SOF):  # APPn, COM, ...: nothing to check, not copied
            i += 2 + length
            continue
        seg = bytes(b[i + 4:i + 2 + length])  # a few hundred bytes; indexing bytes is fast
        why = _segment_error(marker, seg, comps, qtables, huff)
        if why is not None:
            return f"{why} (segment 0x{marker:02x} at byte {i})"
        if marker == 0xDD:
            restart = (seg[0] << 8) | seg[1]
        i += 2 + length
        if marker == 0xDA:
            scans += 1
            if scans == 1 and comps.get(-1) not in _PROGRESSIVE and seg[0] == len(comps) - 1:
                return None  # one interleaved sequential scan: the decoder reads no further marker
            i = _scan_end(b, i, restart)
            if i < 0:
                return None  # no marker after the data: imagehdr's business (no EOI)
    return None


def _scan_end(b: memoryview, i: int, restart: int) -> int:
    """The byte where the entropy-coded data starting at ``i`` ends (its next marker), -1 if
    none. With a restart interval, libjpeg's resync discards a marker below SOF0 met where a
    restart was expected (``jpeg_resync_to_restart``), so such a pair does not end the data."""
    while True:
        m = _NEXT_MARKER.search(b, i)
        if m is None:
            return -1
        j = m.start()
        if restart and b[j + 1] < 0xC0 and b[j + 1] != 0x01:
            i = j + 2
            continue
        return j


def _segment_error(marker: int, seg, comps: dict, qtables: set, huff: dict) -> str | None:
    if marker == 0xC4:  # DHT
        why, tables = _dht(seg)
        huff.update(tables)
        return why
    if marker == 0xDB:  # DQT: (precision/index, 64 entries of 1 or 2 bytes) repeated
        k = 0
        while k < len(seg):
            if seg[k] & 0x0F >= 4:
                return f"quantisation table index {seg[k] & 0x0F}"
            qtables.add(seg[k] & 0x0F)
            k += 1 + 64 * (2 if seg[k] >> 4 else 1)
        return None
    if marker in _SOF:
        if comps:
            return "a second frame header"
        comps[-1] = marker  # the frame type, for the scan's table rules
        if len(seg) < 6 or len(seg) != 6 + 3 * seg[5] or seg[5] == 0:
            return "bogus frame header length"
        factors = []
        for c in range(seg[5]):
            cid, hv, tq = seg[6 + 3 * c:9 + 3 * c]
            if not (1 <= hv >> 4 <= 4 and 1 <= hv & 15 <= 4):
                return f"bogus sampling factors of component {cid}"
            comps[cid] = tq
            factors.append((cid, hv >> 4, hv & 15))
        return _upsampling_error(factors)
    if marker == 0xDA:  # SOS
        if not comps:
            return None  # imagehdr: scan before a frame header
        ns = seg[0] if len(seg) else 0
        if not 1 <= ns <= 4 or len(seg) != 4 + 2 * ns:
            return "bogus scan header length"
        for c in range(ns):
            cid = seg[1 + 2 * c]
            if cid not in comps or cid == -1:
                return f"invalid component id {cid} in the scan"
            if comps[cid] >= 4 or comps[cid] not in qtables:
                return f"quantisation table {comps[cid]} of component {cid} was not defined"
        return _scan_tables_error(comps[-1], seg, ns, huff)
    if marker == 0xDD and len(seg) != 2:  # DRI
        return "bogus restart interval length"
    return None


def _upsampling_error(factors: list[tuple[int, int, int]]) -> str | None:
    """libjpeg upsamples each component by an integral factor only (``jdsample.c``
    ``jinit_upsampler``, at full scale as DALI decodes): the largest horizontal and vertical
    sampling factors must be multiples of every component's, else "Fractional sampling not
    implemented yet", a fatal error before any pixel (e.g. Y 3x2 with Cb 2x1)."""
    hmax, vmax = max(f[1] for f in factors), max(f[2] for f in factors)
    for cid, h, v in factors:
        if hmax % h or vmax % v:
            return f"fractional sampling: component {cid} is sampled {h}x{v} against {hmax}x{vmax}"
    return None


@functools.lru_cache(maxsize=512)
def _dht(seg: bytes) -> tuple[str | None, tuple]:
    """A DHT segment's (error, ((class, index), why the table is unusable or None) ...).
    (class/index, 16 counts, symbols) repeated. Memoised: most files share a few tables."""
    k, tables = 0, []
    while len(seg) - k > 16:
        index = seg[k]
        if index & 0xEC:  # class 0/1 (bit 4), table 0-3
            return f"Huffman table index 0x{index:02x}", ()
        counts = seg[k + 1:k + 17]
        count = sum(counts)
        if count > 256 or count > len(seg) - k - 17:
            return "bogus Huffman table definition", ()
        tables.append(((index >> 4, index & 3), _huffman_error(index >> 4, counts, seg[k + 17:k + 17 + count])))
        k += 17 + count
    return (None if k == len(seg) else "bogus Huffman table length"), tuple(tables)


def _huffman_error(cls: int, counts, symbols) -> str | None:
    """libjpeg's ``jpeg_make_d_derived_tbl`` checks, fatal when a scan uses the table: the
    canonical codes must fit their lengths; a DC table's symbols are at most 15."""
    code = 0
    for length, count in enumerate(counts, 1):
        code += count
        if code >= 1 << length:
            return "bogus Huffman table definition (codes overflow their lengths)"
        code <<= 1
    if cls == 0 and symbols and max(symbols) > 15:
        return "bogus Huffman table definition (a DC symbol over 15)"
    return None


def _scan_tables_error(frame: int, seg, ns: int, huff: dict) -> str | None:
    """The Huffman tables the first scan decodes with (``jdhuff.c`` / ``jdphuff.c``): indices
    0-3; 2 and 3 must be defined (0 and 1 default to the standard tables in sequential
    frames only: the progressive decoder has no defaults, as DALI's refusals show); each must pass
    :func:`_huffman_error`. Progressive scans use only the DC (first DC scan) or the AC table,
    and their band parameters must be valid. Arithmetic-coded frames use no Huffman tables."""
    if frame not in (0xC0, 0xC1, 0xC2):
        return None
    ss, se, ah, al = seg[1 + 2 * ns], seg[2 + 2 * ns], seg[3 + 2 * ns] >> 4, seg[3 + 2 * ns] & 15
    progressive = frame == 0xC2
    band_bad = se != 0 if ss == 0 else (ss > se or se >= 64 or ns != 1)  # jdphuff.c start_pass_phuff_decoder
    if progressive and (band_bad or (ah != 0 and al != ah - 1) or al > 13):
        return f"invalid progressive parameters Ss={ss} Se={se} Ah={ah} Al={al}"
    for c in range(ns):
        td, ta = seg[2 + 2 * c] >> 4, seg[2 + 2 * c] & 15
        used = (
            [(0, td), (1, ta)]
            if not progressive
            else [(0, td)]
            if ss == 0 and ah == 0
            else []
            if ss == 0
            else [(1, ta)]
        )
        for cls, index in used:
            if index >= 4 or ((index >= 2 or progressive) and (cls, index) not in huff):
                return f"Huffman table 0x{index:02x} was not defined"
            if huff.get((cls, index)):
                return huff[cls, index]
    return None
