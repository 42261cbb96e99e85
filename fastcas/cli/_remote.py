"""The ``--connect-timeout --read-timeout --retries`` flags of commands that open remote shards."""
from __future__ import annotations

from fastcas.dataset.fetch import RemoteOptions

_D = RemoteOptions()


def add_remote_arguments(p) -> None:
    g = p.add_argument_group("remote shards (http(s)://, s3://)")
    g.add_argument("--connect-timeout", type=float, default=_D.connect_timeout,
                   help=f"seconds to wait for a connection (default {_D.connect_timeout:g})")
    g.add_argument("--read-timeout", type=float, default=_D.read_timeout,
                   help=f"seconds without a byte before a download is abandoned; no limit on a download "
                   f"that keeps moving (default {_D.read_timeout:g})")
    g.add_argument("--retries", type=int, default=_D.retries,
                   help=f"further attempts after a timeout, a dropped connection or an HTTP 5xx, with "
                   f"exponential backoff (default {_D.retries})")


def remote_options(args) -> RemoteOptions:
    """``RemoteOptions`` from the flags (``ValueError`` naming a bad one)."""
    return RemoteOptions(connect_timeout=args.connect_timeout, read_timeout=args.read_timeout, retries=args.retries)
