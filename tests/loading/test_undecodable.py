"""Undecodable samples cost milliseconds: JPEG headers libjpeg would refuse are skipped by the
source (fastcas.loading.screen, no pipeline failure), and a sample only the decoder finds costs
one pipeline rebuild, with no worker left for close() to wait out (issue 36, item 4)."""
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas import Loader  # noqa: E402
from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards  # noqa: E402
from fastcas.loading.backends import DaliBackend  # noqa: E402
from fastcas.loading.screen import jpeg_tables_error  # noqa: E402
from tests.helpers import jpeg_bytes  # noqa: E402
from tests.loading.test_faults import corrupt_huffman, fractional_sampling, twelve_bit  # noqa: E402

pytestmark = pytest.mark.dali


def _variants():
    """Valid JPEGs as encoders write them: baseline, progressive, optimised tables, 4:4:4,
    4:2:0 at low quality, greyscale."""
    from PIL import Image

    img = Image.open(io.BytesIO(jpeg_bytes(3, size=(64, 48))))
    out = []
    for opts in (dict(), dict(progressive=True), dict(optimize=True), dict(subsampling=0),
                 dict(subsampling=2, quality=30)):
        for im in (img, img.convert("L")):
            buf = io.BytesIO()
            im.save(buf, format="JPEG", **opts)
            out.append(buf.getvalue())
    return out


def test_the_screen_refuses_what_libjpeg_refuses_and_passes_valid_jpegs():
    for good in _variants():
        assert jpeg_tables_error(good) is None
    assert "bogus Huffman table definition" in jpeg_tables_error(corrupt_huffman(jpeg_bytes(5)))
    b = bytearray(jpeg_bytes(5))
    b[2:4] = b"\xff\x5b"  # no such marker
    assert "unsupported marker type 0x5b" in jpeg_tables_error(bytes(b))
    assert "fractional sampling: component 2 is sampled 2x1 against 3x2" in jpeg_tables_error(
        fractional_sampling(jpeg_bytes(5)))
    # what only a given decoder refuses is left to the decoder (and the quarantine)
    assert jpeg_tables_error(twelve_bit(jpeg_bytes(5))) is None


def later_scan_damage(jpeg: bytes) -> bytes:
    """A progressive copy of the image whose second scan's Huffman table has code counts that
    overflow their lengths: bit rot in the file's body, after the first scan. Every rule before
    the first scan holds (imagehdr, the first-scan screen); DALI's decoder reads every scan of a
    progressive file and refuses it."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buf, format="JPEG", progressive=True, quality=90)
    b = bytearray(buf.getvalue())
    first_scan = b.index(b"\xff\xda")
    i = b.index(b"\xff\xc4", b.index(b"\xff\xda", first_scan + 2))  # a DHT after the second scan header
    b[i + 5:i + 8] = b"\xff\xff\xff"
    return bytes(b)


def test_the_screen_walks_every_scan_of_a_progressive_jpeg():
    """Damage after the first scan: in a progressive file the decoder refuses it (it reads every
    scan's tables), so the screen reads on to EOI; in a one-scan baseline file it only warns, so
    the screen stops at the first scan and such a file is not refused."""
    from fastcas.dataset import imagehdr
    from fastcas.loading.pipeline import DecodeProbe

    probe = DecodeProbe("cpu")
    for seed in range(3):
        bad = later_scan_damage(jpeg_bytes(seed, size=(64, 48)))
        assert imagehdr.read(bad) is not None  # the header checks pass
        assert "bogus Huffman table definition" in jpeg_tables_error(bad)
        assert probe(np.frombuffer(bad, np.uint8), [0, 0, 1, 1]) is not None  # and the decoder refuses it
    baseline = bytearray(jpeg_bytes(7, size=(64, 48)))
    baseline[-40:-38] = b"\xff\xc4"  # a marker pair inside the only scan's data: the decoder warns
    assert jpeg_tables_error(bytes(baseline)) is None
    assert probe(np.frombuffer(bytes(baseline), np.uint8), [0, 0, 1, 1]) is None


@pytest.fixture(scope="module")
def screened_ds(tmp_path_factory):
    """300 samples, 7 undecodable (2%): three with a bogus first Huffman table, three progressive
    with a bogus table after the first scan, one with fractional sampling; the screen finds all."""
    root = tmp_path_factory.mktemp("screened") / "ds"
    samples = [RawSample(f"k{i:03d}", jpeg_bytes(i), i % 3) for i in range(300)]
    for i, corrupt in ((17, corrupt_huffman), (140, corrupt_huffman), (299, corrupt_huffman),
                       (5, later_scan_damage), (101, later_scan_damage), (202, later_scan_damage),
                       (250, fractional_sampling)):
        samples[i] = RawSample(f"k{i:03d}", corrupt(jpeg_bytes(i)), i % 3)
    write_shards(samples, root, ShardWriterConfig(shard_size=100))
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_screened_corruption_costs_no_rebuild_and_loses_no_sample(screened_ds, workers):
    """Every damaged sample is skipped and counted, no batch fails (one pipeline build for the
    epoch, no quarantine), every position is filled: 300 samples, each readable key drawn once
    or as the substitute of a skipped neighbour."""
    loader, backend, labels, caught = _one_pass(screened_ds, workers)
    assert len(labels) == 300
    assert sorted(loader.skipped) == ["k005", "k017", "k101", "k140", "k202", "k250", "k299"]
    assert all(n == 1 for n in loader.skipped.values())
    assert loader.state_dict()["quarantine"] == [] and backend.builds == 1 and backend.join_timeouts == 0
    assert sum("skipped unreadable sample" in str(w.message) for w in caught) == 7


class CountingBackend(DaliBackend):
    """DaliBackend; ``builds`` and ``join_timeouts`` are its own diagnostics."""


def _one_pass(ds, workers: int):
    """One evaluation pass over ``ds`` through a :class:`CountingBackend`, the loader closed:
    ``(loader, backend, labels int64 [N], warnings caught)``."""
    backend = CountingBackend()
    loader = Loader(ds, 16, train=False, image_size=16, py_workers=workers, last_batch="partial",
                    device="cpu", backend=backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels = torch.cat([b[1] for b in loader])
    loader.close()
    return loader, backend, labels, caught


@pytest.fixture(scope="module")
def one_percent_ds(tmp_path_factory):
    """400 samples, 4 undecodable (1%): two with a bogus Huffman table (the screen's), two with
    12-bit samples (only the decoder's)."""
    root = tmp_path_factory.mktemp("onepercent") / "ds"
    samples = [RawSample(f"k{i:03d}", jpeg_bytes(i), i % 3) for i in range(400)]
    for i, corrupt in ((37, corrupt_huffman), (211, corrupt_huffman), (120, twelve_bit), (333, twelve_bit)):
        samples[i] = RawSample(f"k{i:03d}", corrupt(jpeg_bytes(i)), i % 3)
    write_shards(samples, root, ShardWriterConfig(shard_size=100))
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_one_percent_corrupt_jpegs_cost_one_rebuild_each_and_no_join_timeout(one_percent_ds, workers):
    """Before: each bad sample failed a batch, and close() waited out a 10 s join per worker
    (the failed batch's traceback kept the pipeline alive), ~13 s a sample. Now the screen's
    two cost no rebuild, the decoder's two one each, and no worker outlives its close()."""
    loader, backend, labels, caught = _one_pass(one_percent_ds, workers)
    assert len(labels) == 400
    assert sorted(loader.skipped) == ["k037", "k120", "k211", "k333"]
    assert sorted(loader.state_dict()["quarantine"]) == ["k120", "k333"]
    assert sum("DALI cannot decode" in str(w.message) for w in caught) == 2
    assert backend.builds == 1 + 2
    assert backend.join_timeouts == 0


def test_strict_raises_and_close_still_waits_for_no_worker(one_percent_ds):
    """The CorruptSampleError chains the DALI error: its frames no longer hold the pipeline,
    so closing while the error is alive (in an except block) stops the workers at once."""
    from fastcas.core.errors import CorruptSampleError

    backend = CountingBackend()
    loader = Loader(one_percent_ds, 16, train=False, image_size=16, py_workers=1, strict=True, device="cpu",
                    backend=backend)
    with pytest.raises(CorruptSampleError, match=r"sample 'k037' in .*corrupt JPEG headers.*bogus Huffman"):
        list(loader)
    loader = Loader(one_percent_ds, 16, train=False, image_size=16, py_workers=1, strict=True, device="cpu",
                    backend=backend)
    loader.load_state_dict({"epoch": 0, "step": 7, "seed": 0})  # past k037, at k120's batch (12-bit samples)
    try:
        list(loader)
    except CorruptSampleError as exc:
        assert "sample 'k120'" in str(exc) and "DALI cannot decode it" in str(exc)
        loader.close()  # the error (and its DALI cause) still alive here
    else:
        pytest.fail("no CorruptSampleError")
    assert backend.join_timeouts == 0


class ProbeCountingBackend(DaliBackend):
    """DaliBackend whose decode probe counts the samples it decodes."""

    probed = 0

    def decode_probe(self):
        probe = super().decode_probe()

        def counted(jpeg, window):
            self.probed += 1
            return probe(jpeg, window)

        return counted


def test_a_quarantine_decodes_the_sample_dali_names_not_the_whole_batch(one_percent_ds):
    """DALI's error names the failed batch position ("Failed to decode sample #j"): that sample
    is decoded first and, being the culprit, alone: 2 decoder-only samples, 2 probe decodes
    (before: every sample of the failed batch, 16 each)."""
    backend = ProbeCountingBackend()
    loader = Loader(one_percent_ds, 16, train=False, image_size=16, py_workers=1, last_batch="partial",
                    device="cpu", backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = sum(len(b[1]) for b in loader)
    loader.close()
    assert n == 400 and sorted(loader.state_dict()["quarantine"]) == ["k120", "k333"]
    assert backend.probed == 2 and backend.builds == 3


def _progressive(seed: int, **opts) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg_bytes(seed, size=(64, 48)))).save(buf, format="JPEG", progressive=True, **opts)
    return buf.getvalue()


def test_progressive_band_parameters_are_checked_for_dc_scans_too():
    """A DC scan (Ss=0) with Ah=11, Al=5: libjpeg refuses it ("Invalid progressive parameters");
    the screen's rule once checked Ah/Al for AC bands only (an 'or' bound into a conditional)."""
    b = bytearray(_progressive(4))
    sos = b.index(b"\xff\xda")
    b[sos + 2 + (b[sos + 2] << 8 | b[sos + 3]) - 1] = 0xB5  # the first scan's Ah/Al byte
    assert "invalid progressive parameters Ss=0 Se=0 Ah=11 Al=5" in jpeg_tables_error(bytes(b))


def test_the_screen_refuses_exactly_what_the_decoder_refuses_over_damaged_progressive_jpegs():
    """Random bytes changed after the first scan header of progressive JPEGs (the damage the
    decoder refuses about one time in four): every file the screen refuses, DALI's CPU decoder
    refuses too (no good sample is dropped), and every file the decoder refuses, the screen
    caught (none is left to a rebuild). Deterministic: a seeded generator."""
    import random

    from fastcas.dataset import imagehdr
    from fastcas.loading.pipeline import DecodeProbe

    probe, rng = DecodeProbe("cpu"), random.Random(36)
    screened = refused = 0
    for seed in range(30):
        for opts in (dict(), dict(quality=40)):
            good = _progressive(seed, **opts)
            start = good.index(b"\xff\xda") + 12
            for flips in (1, 2, 3):
                b = bytearray(good)
                for _ in range(flips):
                    b[rng.randrange(start, len(b) - 2)] = rng.randrange(256)
                bad = bytes(b)
                if imagehdr.read(bad) is None:
                    continue  # truncated or without EOI: imagehdr's, before the screen
                why = jpeg_tables_error(bad)
                decoder = probe(np.frombuffer(bad, np.uint8), [0, 0, 1, 1])
                assert (why is None) == (decoder is None), (seed, opts, flips, why)
                screened += why is not None
                refused += decoder is not None
    assert screened == refused > 20  # the damage did reach the decoder's fatal rules
