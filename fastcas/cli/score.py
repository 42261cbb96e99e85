"""``fastcas score DATASET --out scores.parquet``: attributes and CAS per image.

Single process: decode + encode in resumable chunks (``OUT.work/``), then rank within classes
and write OUT. Split over ranks, either explicitly (``--rank R --world-size W --out PART``,
then ``--merge PART... --out OUT``) or under ``torchrun`` (RANK / WORLD_SIZE from the
environment: each rank writes ``OUT.part-RRR-of-WWW.parquet``, rank 0 merges into OUT after a
gloo barrier and removes the parts). CAS needs the whole training set, so parts carry
attribute ids (or, for CLIP without a saved dictionary, image embeddings in a sidecar
``.npy``) and the ranking, and the dictionary, is done once at the merge: the merged file is
identical to a single-process run.
"""
from __future__ import annotations

from fastcas.scoring.vocabulary import ENCODERS

HELP = "score images with attribute encoders and compute CAS"


def add_arguments(p) -> None:
    p.add_argument("dataset", help="dataset directory or manifest")
    p.add_argument("--out", required=True, help="score file (Parquet)")
    p.add_argument("--encoder", choices=ENCODERS, default="pixel")
    p.add_argument("--model", "--clip-model", dest="model", default="ViT-B-32",
                   help="open_clip model name or model-config .json (clip encoder)")
    p.add_argument("--weights", "--clip-weights", "--clip-pretrained", dest="weights", default=None,
                   help="CLIP weights: a local file, or an open_clip pretrained tag (only a tag may use the "
                   "network); default random weights (tests and benchmarks only)")
    p.add_argument("--dictionary", default=None, help="visual dictionary .npz to reuse (built and saved there, "
                   "or beside OUT as OUT.dictionary.npz, when missing)")
    p.add_argument("--anchors", default=None, help="anchor-pool dataset for the dictionary (default: DATASET "
                   "itself; the CAS paper builds it from ImageNet-21K images)")
    p.add_argument("--top-k", type=int, default=1, help="dictionary key = mean of the top-k anchors (paper: 1)")
    p.add_argument("--text-only", action="store_true", help="ablation: match images to text embeddings")
    p.add_argument("--reference", "--train-scores", dest="reference", default=None,
                   help="training set's score file: rank with its class statistics (for validation sets)")
    p.add_argument("--bins", choices=["fitted", "fixed"], default="fitted",
                   help="pixel encoder: bins fitted to this (training) set's quantiles, saved in OUT and "
                   "reused by --reference (default), or fixed absolute bins for comparing datasets")
    p.add_argument("--min-share", type=float, default=0.02,
                   help="pixel encoder, fitted bins: least share of the set per value (default 0.02)")
    p.add_argument("--rank", type=int, default=None, help="this part's rank (default: $RANK or 0)")
    p.add_argument("--world-size", type=int, default=None, help="number of parts (default: $WORLD_SIZE or 1)")
    p.add_argument("--merge", nargs="+", default=None, metavar="PART", help="merge per-rank part files into OUT")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=None, help="decode size (pixel: 64, clip: the model's)")
    p.add_argument("--chunk-batches", type=int, default=16, help="batches per resume chunk")
    p.add_argument("--decoder", choices=["auto", "dali", "torchvision"], default="auto",
                   help="torchvision.io.decode_jpeg + PIL for PNG/WebP (auto; nvJPEG on a GPU) or fastcas's "
                   "DALI loader")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when torch sees one, else cpu), cpu or cuda")
    p.add_argument("--workers", type=int, default=1, help="DALI python workers")
    from fastcas.dataset.imagehdr import DEFAULT_MAX_PIXELS

    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse (naming it, before decoding) an image declaring more pixels, as the loader "
                   f"does (default {DEFAULT_MAX_PIXELS:,}, PIL's bomb limit)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="discard resume chunks in OUT.work left by another run (another dataset, encoder or "
                   "size) instead of refusing them")


def run(args) -> int:
    from fastcas.cli._device import require_device
    from fastcas.scoring.job import ScoreConfig, score

    require_device(args.device)
    fields = {k: v for k, v in vars(args).items() if k in ScoreConfig.__dataclass_fields__}
    result = score(ScoreConfig(**fields))
    if result:
        print(f"wrote {args.out}: {result}")
    return 0
