"""``fastcas index`` throughput (tars/s, MB/s, samples/s) on WebDataset tars of the real-photo
corpus written by ``webdataset.ShardWriter``: headers only (local tars, page cache warm), with
SHA-256 of every byte (``--hash``), and over HTTP from a server on 127.0.0.1 (download into the
cache + hash + scan).

    python benchmarks/bench_index.py [--quick] [--images 2000] [--per-tar 250]
"""
from __future__ import annotations

import http.server
import shutil
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import base_parser, print_table, write_json  # noqa: E402
from fastcas.dataset.indexer import IndexConfig, index_dataset  # noqa: E402
from fastcas.tools.demo.data import corpus_samples  # noqa: E402


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def _serve(root: Path):
    handler = partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def main(argv=None) -> int:
    import webdataset as wds

    p = base_parser(__doc__)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--per-tar", type=int, default=250)
    a = p.parse_args(argv)
    n, per = (200, 50) if a.quick else (a.images, a.per_tar)
    tmp = Path(tempfile.mkdtemp())
    try:
        (tmp / "wds").mkdir()
        with wds.ShardWriter(str(tmp / "wds" / "train-%06d.tar"), maxcount=per, verbose=0) as w:
            for s in corpus_samples(n, seed=0):
                w.write({"__key__": s.key, "jpg": s.data, "cls": s.label % 1000})
        tars = sorted((tmp / "wds").glob("*.tar"))
        nbytes = sum(t.stat().st_size for t in tars)
        for t in tars:  # warm the page cache: time the indexer, not the disk
            t.read_bytes()
        rows = []

        def run(name, sources, config, reps=3, workers=1):
            best = float("inf")
            for k in range(reps):
                out = tmp / f"out-{name}-{k}"
                t0 = time.perf_counter()
                m = index_dataset(sources, out, config, workers=workers)
                best = min(best, time.perf_counter() - t0)
                assert m["num_samples"] == n
            rows.append({"mode": name, "tars_per_s": len(tars) / best, "MB_per_s": nbytes / best / 1e6,
                         "samples_per_s": n / best, "seconds": best})

        run("local, headers only", [str(tmp / "wds")], IndexConfig())
        run("local, headers only, 2 processes", [str(tmp / "wds")], IndexConfig(), workers=2)
        run("local + sha256 (--hash)", [str(tmp / "wds")], IndexConfig(hash_local=True))
        httpd, url = _serve(tmp / "wds")
        try:
            urls = [f"{url}/{t.name}" for t in tars]
            best = float("inf")
            for k in range(2):  # a fresh cache each time: every byte crosses the loopback
                t0 = time.perf_counter()
                index_dataset(urls, tmp / f"out-http-{k}", IndexConfig(cache_dir=str(tmp / f"cache-{k}")))
                best = min(best, time.perf_counter() - t0)
            rows.append({"mode": "http 127.0.0.1 (download + sha256 + scan)", "tars_per_s": len(tars) / best,
                         "MB_per_s": nbytes / best / 1e6, "samples_per_s": n / best, "seconds": best})
        finally:
            httpd.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows, title=f"fastcas index: {len(tars)} tars, {n} corpus JPEGs, {nbytes / 1e6:.1f} MB")
    write_json("bench_index", {"images": n, "tars": len(tars), "bytes": nbytes, "per_tar": per}, rows, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
