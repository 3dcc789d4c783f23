"""``gan-style serve --checkpoint CKPT [--checkpoint CKPT2 ...] [--host 127.0.0.1] [--port 8000]``."""

from __future__ import annotations

import argparse
import logging

from gan_style.errors import UserError

logger = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gan_style.serve.app import DEFAULT_MAX_PIXELS, DEFAULT_MAX_QUEUE, DEFAULT_MAX_UPLOAD_MB, DEFAULT_TILE, DEFAULT_TILE_ABOVE

    parser.add_argument("--checkpoint", action="append", required=True, help="a model to serve (repeat for several): run folder, checkpoint, safetensors export")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="larger request bodies get 413")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images get 400 before they are decoded")
    parser.add_argument("--tile-above", type=int, default=DEFAULT_TILE_ABOVE, help="translate photos with a longer side than this in tiles")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help="tile size in pixels for large photos")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help="requests that may wait per model before 503")


def run(args: argparse.Namespace) -> int:
    import os
    import tempfile

    import uvicorn

    from gan_style.serve.app import Limits, create_app
    from gan_style.translate import resolve_device

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: choose a port between 1 and 65535")
    if args.max_upload_mb <= 0 or args.max_pixels <= 0 or args.tile <= 0 or args.max_queue <= 0:
        raise UserError("--max-upload-mb, --max-pixels, --tile and --max-queue must be positive")
    if args.host not in LOCAL_HOSTS:
        logger.warning("listening on %s: other computers on the network can use this server", args.host)
    limits = Limits(int(args.max_upload_mb * 1024 * 1024), args.max_pixels, args.tile_above, args.tile, args.max_queue)
    # The multipart parser spools large uploads to temporary files: keep them in a folder of our
    # own, removed when the server stops.
    with tempfile.TemporaryDirectory(prefix="gan-style-serve-") as spool:
        tempfile.tempdir = os.environ["TMPDIR"] = spool
        app = create_app(args.checkpoint, device=str(resolve_device(args.device)), limits=limits)
        print(f"serving {', '.join(app.state.served)} on http://{args.host}:{args.port}/  (Ctrl+C stops)", flush=True)
        # limit_concurrency bounds the requests held in memory at once (beyond it: 503)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", limit_concurrency=64, timeout_keep_alive=5)
    return 0
