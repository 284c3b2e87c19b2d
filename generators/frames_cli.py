"""``vigil-generate frames``: simulated telescope frames to Kafka or to a folder of files.

Frames are large binary messages, so there is no JSON-lines output: without
``--bootstrap`` the frames go to ``--out DIR`` as FITS (or PNG) files plus a
``truth.jsonl`` with each file's header and ground truth. With
``--bootstrap`` the messages are those of
:func:`generators.telescope.iter_messages` (``--encoding png``, ``fits``, or
``ref`` with ``--ref-dir`` on a filesystem the consumers share).

Example:
    >>> import tempfile, pathlib
    >>> from generators.telescope import TelescopeSimConfig, iter_frames
    >>> cfg = TelescopeSimConfig(count=2, width=32, height=24, stars=5)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     out = pathlib.Path(folder)
    ...     ids = [f.frame_id for f in write_frame_files(iter_frames(cfg), out)]
    ...     names = sorted(p.name for p in out.iterdir())
    >>> ids, names
    (['cam1-000000', 'cam1-000001'], ['cam1-000000.fits', 'cam1-000001.fits', 'truth.jsonl'])

"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from generators.telescope import TelescopeSimConfig, iter_frames, iter_messages
from operators.framecodec import ENCODINGS, header_dict, write_fits
from operators.frameimage import png_bytes
from operators.frames import Frame

__all__ = [
    "FILE_FORMATS",
    "OUT_HELP",
    "add_options",
    "check",
    "paced",
    "run",
    "truth_record",
    "write_frame_files",
]

FILE_FORMATS = ("fits", "png")
OUT_HELP = "folder of FITS or PNG files and truth.jsonl when no --bootstrap (required then)"


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of the frames command beyond the common output options."""
    group = parser.add_argument_group("frames")
    group.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="png",
        help="Kafka payload: png or fits in the message, ref: a file in --ref-dir (default png)",
    )
    group.add_argument(
        "--ref-dir", type=Path, help="with --encoding ref: shared folder the FITS files go to"
    )
    group.add_argument(
        "--file-format", choices=FILE_FORMATS, default="fits", help="--out files (default fits)"
    )


def check(args: argparse.Namespace) -> str | None:
    """What is wrong with the frames options, or ``None``.

    Example:
        >>> check(argparse.Namespace(bootstrap=None, out=None, encoding="png", ref_dir=None))
        '--out: expected a folder for the frame files when there is no --bootstrap'

    """
    if not args.bootstrap and args.out is None:
        return "--out: expected a folder for the frame files when there is no --bootstrap"
    if args.bootstrap and args.encoding == "ref" and args.ref_dir is None:
        return "--ref-dir: expected the shared folder of the frame files for --encoding ref"
    return None


def paced(frames: Iterator[Frame], rate: float) -> Iterator[Frame]:
    """Yield frame ``i`` no earlier than ``i / rate`` seconds after the start (0: unpaced)."""
    start = time.monotonic()
    for i, frame in enumerate(frames):
        if rate > 0:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield frame


def truth_record(frame: Frame, file: str) -> bytes:
    """One line of ``truth.jsonl``: the file, the frame's header and its ground truth.

    Example:
        >>> from generators.telescope import TelescopeSimConfig, iter_frames
        >>> f = next(iter_frames(TelescopeSimConfig(count=1, width=32, height=32, stars=5)))
        >>> sorted(orjson.loads(truth_record(f, "x.fits")))
        ['camera', 'file', 'frame_id', 'header', 'truth', 'unusable']

    """
    record = {
        "file": file,
        "frame_id": frame.frame_id,
        "camera": frame.camera,
        "header": header_dict(frame.header),
        "truth": [[b.x0, b.y0, b.x1, b.y1, b.kind] for b in frame.truth],
        "unusable": frame.unusable,
    }
    return orjson.dumps(record)


def write_frame_files(
    frames: Iterator[Frame], out: Path, file_format: str = "fits"
) -> Iterator[Frame]:
    """Write each frame to ``out`` as ``<frame_id>.fits`` (or ``.png``), plus ``truth.jsonl``.

    FITS files carry the header keywords that
    :func:`operators.framecodec.read_frame_file` reads; PNG files only the
    pixels, so each header is in ``truth.jsonl`` too. Yields each frame once
    its file is written (the caller counts).

    Raises:
        ValueError: for an unknown ``file_format``.

    """
    if file_format not in FILE_FORMATS:
        raise ValueError(f"expected a file format in {FILE_FORMATS}, got {file_format!r}")
    out.mkdir(parents=True, exist_ok=True)
    with (out / "truth.jsonl").open("wb") as truth:
        for frame in frames:
            name = f"{frame.frame_id}.{file_format}"
            if file_format == "fits":
                write_fits(out / name, frame)
            else:
                (out / name).write_bytes(png_bytes(frame.pixels))
            truth.write(truth_record(frame, name) + b"\n")
            truth.flush()
            yield frame


def run(
    cfg: TelescopeSimConfig,
    args: argparse.Namespace,
    produce: Callable[[Iterator[tuple[bytes, bytes]]], int],
    written: Callable[[], None],
) -> int:
    """Produce the frames with ``produce`` (``--bootstrap``) or write them to ``--out``.

    Args:
        cfg: The simulator settings.
        args: The parsed options (see :func:`add_options` and :func:`check`).
        produce: Sends messages to Kafka and returns the exit code.
        written: Called after each file written.

    Returns:
        The exit code: 0, or that of ``produce``, or 130 when interrupted.

    """
    if args.bootstrap:
        ref_dir = args.ref_dir if args.encoding == "ref" else None
        return produce(iter_messages(cfg, args.encoding, ref_dir=ref_dir))
    try:
        frames = paced(iter_frames(cfg), args.rate)
        for _ in write_frame_files(frames, args.out, args.file_format):
            written()
    except KeyboardInterrupt:
        return 130
    return 0
