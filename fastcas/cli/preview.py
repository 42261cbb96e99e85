"""``fastcas preview DATASET --mix KIND --out grid.png``: see what the mixing kernels do."""
from __future__ import annotations

HELP = "PNG grid of mixed samples and their masks"


def add_arguments(p) -> None:
    from fastcas.mix import KINDS
    from fastcas.mix.saliency import ALIASES, METHODS

    p.add_argument("dataset", help="dataset directory or manifest")
    p.add_argument("--mix", choices=KINDS, required=True)
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--n", type=int, default=8, help="samples to show (default 8)")
    p.add_argument("--size", type=int, default=128, help="display size in pixels")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--saliency", choices=sorted({*METHODS, *ALIASES}), default="fine-grained",
                   help="SaliencyMix saliency: the reference's fine-grained static saliency (batched, default), "
                        "the same through OpenCV, or spectral residual")
    p.add_argument("--seed", type=int, default=0)


def load_batch(reader, indices, size: int):
    """float32 [B, 3, size, size] in [0, 1], PIL decode + resize (display only)."""
    import io

    import numpy as np
    from PIL import Image

    out = []
    for i in indices:
        im = Image.open(io.BytesIO(bytes(reader[int(i)].data))).convert("RGB").resize((size, size), Image.BILINEAR)
        out.append(np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(out)


def run(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from fastcas import mix
    from fastcas.core.io import atomic_open
    from fastcas.core.rng import generator
    from fastcas.dataset.reader import ShardReader

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    reader = ShardReader(args.dataset)
    rng = generator(args.seed)
    idx = rng.choice(len(reader), size=2 * args.n, replace=len(reader) < 2 * args.n)
    bg, fg = load_batch(reader, idx[: args.n], args.size), load_batch(reader, idx[args.n :], args.size)
    opts = {"saliency": args.saliency, "foreground": fg} if args.mix == "saliencymix" else {}
    params = mix.make_params(args.mix, args.n, args.size, args.size, alpha=args.alpha, generator=rng, **opts)
    mixed = mix.apply(params, bg, fg)
    region = mix.apply(params, np.zeros_like(bg[:, :1]), np.ones_like(bg[:, :1]))[:, 0]
    rows = [("background", bg), ("foreground", fg), ("foreground mask", region), ("mixed", mixed)]
    fig, axes = plt.subplots(len(rows), args.n, figsize=(1.6 * args.n, 1.7 * len(rows)), squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for c in range(args.n):
            ax = axes[r][c]
            img = imgs[c]
            ax.imshow(img if img.ndim == 2 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                ax.set_title(f"{reader.class_names[reader.labels[idx[c]]][:12]}", fontsize=7)
            if r == len(rows) - 1:
                ax.set_xlabel(f"lam={params.lam[c]:.2f}", fontsize=7)
    fig.suptitle(f"{args.mix} (alpha={args.alpha}); lam = kept background fraction", fontsize=9)
    fig.tight_layout()
    with atomic_open(args.out, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0
