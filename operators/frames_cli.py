"""``vigil-frames``: build a target's memory bank from reference frames, score frames, accept them.

Point it at your own telescope's FITS (or PNG) files::

    vigil-frames index --target M31 refs/*.fits      # references -> bank + calibration
    vigil-frames score night/*.fits                   # one JSON line per frame
    vigil-frames accept night/frame_0042.fits         # a person says: this one is normal
    vigil-frames info                                 # targets, patches, thresholds

Folders are read recursively (``*.fits``, ``*.fit``, ``*.fts``, ``*.png``, and
``.fz``/``.gz`` compressed FITS). The target of a FITS file is its ``OBJECT``
keyword (``--object`` for files without one, and for PNG). The bank is a
Milvus Lite file by default (``--bank vigil-out/vigil-frames.db``) or a
Milvus server (``--bank http://host:19530``).

``score`` prints ``{"file", "frame_id", "target", "score", "threshold",
"is_anomaly", "boxes": [[x0, y0, x1, y1, score], ...], "skipped"}`` per frame;
``skipped`` gives the reason an unusable frame was not scored. Exit codes: 0
success, 1 a file could not be read or scored (reported on stderr, the others
still processed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from operators.embedding import PatchEmbedder
from operators.framecodec import FrameDecodeError, read_frame_file
from operators.framefiles import FileDefaults
from operators.framepipe import POOL, FramePipeline, PipelineConfig
from operators.frames import Frame, ScoredFrame
from operators.framescore import FALSE_ALARM_RATE
from operators.membank import BankConfig, BankError, MemoryBank

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_BANK = "vigil-out/vigil-frames.db"
SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fits.gz", ".fz", ".png")


def frame_files(paths: list[str]) -> Iterator[Path]:
    """The files named, and the frame files under the folders named, sorted per folder."""
    for name in paths:
        p = Path(name)
        if p.is_dir():
            yield from sorted(
                f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(SUFFIXES)
            )
        else:
            yield p


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil-frames", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", default=DEFAULT_BANK, help="Milvus Lite file or server URI")
    parser.add_argument("--token", default="", help="Milvus server token (user:password)")
    parser.add_argument("--model", default="lite0", help="lite0, random or an ONNX file")
    parser.add_argument("--object", default=None, help="target of files with no OBJECT keyword")
    parser.add_argument("--camera", default="file", help="camera id given to the frames")
    parser.add_argument("--pool", type=int, default=POOL, help="model cells pooled per patch side")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    index = sub.add_parser("index", help="make FILES the references of a target")
    index.add_argument("--target", required=True, help="the target the references show")
    index.add_argument(
        "--false-alarm-rate", type=float, default=FALSE_ALARM_RATE, help="per normal frame"
    )
    index.add_argument("files", nargs="+")
    for name, text in (("score", "score FILES"), ("accept", "add FILES to their references")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("files", nargs="+")
    sub.add_parser("info", help="targets in the bank")
    return parser


def _read(path: Path, args: argparse.Namespace, target: str | None) -> Frame:
    defaults = FileDefaults(object=target or args.object or "unknown")
    frame = read_frame_file(path, camera=args.camera, defaults=defaults)
    if target is not None and frame.target != target:
        msg = f"{path}: OBJECT is {frame.target!r}, not the target {target!r}"
        raise ValueError(msg)
    return frame


def _result(path: Path, item: ScoredFrame) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 4)

    return {
        "file": str(path),
        "frame_id": item.frame.frame_id,
        "target": item.frame.target,
        "score": num(item.score),
        "threshold": num(item.threshold),
        "is_anomaly": item.is_anomaly,
        "boxes": [[b.x0, b.y0, b.x1, b.y1, round(b.score, 3)] for b in item.boxes],
        "skipped": item.skipped,
    }


def _run(args: argparse.Namespace, pipeline: FramePipeline) -> int:
    failed = 0
    log = logging.getLogger("vigil-frames")
    if args.command == "info":
        for target in pipeline.bank.targets():
            model = pipeline.model(target)
            info = {"target": target, "patches": pipeline.bank.count(target)}
            if model is not None:
                cal = model.calibration
                info |= {"grid": list(cal.grid), "stride": cal.stride, "threshold": cal.threshold}
            print(json.dumps(info), flush=True)
        return EXIT_OK
    frames: list[tuple[Path, Frame]] = []
    for path in frame_files(args.files):
        try:
            frames.append((path, _read(path, args, getattr(args, "target", None))))
        except (FrameDecodeError, OSError, ValueError) as err:
            print(f"vigil-frames: {path}: {err}", file=sys.stderr)
            failed += 1
    if args.command == "index":
        usable, unusable = pipeline.usable([f for _, f in frames])
        for frame, reason in unusable:
            print(f"vigil-frames: not a reference: {frame.frame_id}: {reason}", file=sys.stderr)
        model = pipeline.index(args.target, usable)
        cal = model.calibration
        summary = {
            "target": args.target,
            "references": len(usable),
            "patches": pipeline.bank.count(args.target),
            "grid": list(cal.grid),
            "stride": cal.stride,
            "threshold": round(cal.threshold, 4),
            "loo_scores_max": round(float(cal.loo_scores.max()), 4),
        }
        print(json.dumps(summary), flush=True)
    elif args.command == "score":
        for path, frame in frames:
            print(json.dumps(_result(path, pipeline.score(frame))), flush=True)
    else:  # accept
        for path, frame in frames:
            added = pipeline.accept(frame)
            log.info("%s: %d patches added to %r", path, added, frame.target)
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vigil-frames``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "index" and not 0.0 < args.false_alarm_rate < 1.0:
        print("vigil-frames: --false-alarm-rate: expected 0 < rate < 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        embedder = PatchEmbedder(args.model)
    except (OSError, ValueError) as err:
        print(f"vigil-frames: --model: {err}", file=sys.stderr)
        return EXIT_USAGE
    bank_dir = Path(args.bank).parent
    if args.bank.endswith(".db"):
        bank_dir.mkdir(parents=True, exist_ok=True)
    cfg = BankConfig(uri=args.bank, token=args.token, dim=embedder.dim + 2)
    false_alarm_rate = getattr(args, "false_alarm_rate", FALSE_ALARM_RATE)
    try:
        with MemoryBank(cfg) as bank:
            pipeline = FramePipeline(
                embedder,
                bank,
                PipelineConfig(false_alarm_rate=false_alarm_rate, pool=args.pool),
            )
            return _run(args, pipeline)
    except (BankError, ValueError) as err:
        print(f"vigil-frames: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
