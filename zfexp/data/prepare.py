"""Resize an ImageFolder tree once, as Krizhevsky et al. did for ImageNet: every image's smaller side at
``data.preprocess.resize`` (256), in a new tree of the same layout that ``data.root`` can then point at.

    python -m zfexp.data.prepare data=imagenet data.root=/data/imagenet out=/data/imagenet256

Every epoch of the training then decodes a 256 px JPEG instead of a full-size one (ImageNet's average about
400x350) and the workers' resize is a no-op. In parallel (``workers``, all cores by default), with a progress
bar; each image is written to a temporary file and renamed, so an interrupted run leaves no half image and the
next run continues where it stopped (images already in ``out`` are skipped). An image that cannot be decoded is
named, skipped and counted (``prepare.json``, ``corrupt.txt``); the tree is still usable.

The pixels are those the training's own decoding and resize would give (the same loader and transform), then
encoded again: JPEG inputs as JPEG at ``jpeg_quality`` (95), others in their own format.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from omegaconf import DictConfig
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from zfexp.checks import integer, positive_int
from zfexp.data.files import write_atomic
from zfexp.data.imagenet import load_pixels
from zfexp.errors import CorruptImageError, DatasetNotFoundError, InvalidValueError
from zfexp.runs.lifecycle import Run, hydra_entry_point, task_wrapper
from zfexp.runs.progress import progress

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent ends
JPEG_SUFFIXES = (".jpg", ".jpeg")


def images_to_prepare(root: Path, out: Path, split_dirs: list[str]) -> list[tuple[Path, Path]]:
    """``(source, destination)`` for every image of the split folders (``<root>/<split>/<class>/<image>``)."""
    pairs = []
    for split in split_dirs:
        top = root / split
        if not top.is_dir():
            raise DatasetNotFoundError(f"data.root={root}: no folder {top}; prepare reads the ImageFolder layout "
                                       "<root>/<split>/<class>/<image> (data.train_dir, data.val_dir)")
        for source in sorted(top.rglob("*")):
            if source.is_file() and source.suffix.lower() in IMG_EXTENSIONS:
                pairs.append((source, out / source.relative_to(root)))
    return pairs


def resize_image(source: Path, destination: Path, side: int, jpeg_quality: int) -> str | None:
    """Write ``source`` with its smaller side at ``side`` px to ``destination``; ``None``, or why it could not."""
    try:
        pixels = load_pixels(str(source))
    except CorruptImageError as err:
        cause = err.__cause__ or err  # PIL's own words for what is wrong with the file
        return f"{type(cause).__name__}: {cause}"
    resized = Image.fromarray(v2.Resize(side, antialias=True)(pixels).permute(1, 2, 0).numpy())
    options = {"quality": jpeg_quality} if destination.suffix.lower() in JPEG_SUFFIXES else {}
    fmt = Image.registered_extensions().get(destination.suffix.lower())
    write_atomic(destination, lambda tmp: resized.save(tmp, format=fmt, **options))
    return None


_PARENT: int | None = None  # the pid of the process that started this pool worker


def die_with_parent() -> None:
    """Initializer of the pool's workers: a worker ends when the process that started it does (the main one,
    or a fork server), also when that one is killed with SIGKILL (then nothing tells the pool to stop). On
    Linux the kernel sends it SIGKILL at once (``PR_SET_PDEATHSIG``); on any system each task first checks that
    its parent is still the same."""
    global _PARENT
    _PARENT = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != _PARENT:  # the parent ended before the signal was asked for
            os._exit(1)


def _resize_task(args: tuple[Path, Path, int, int]) -> str | None:
    if _PARENT is not None and os.getppid() != _PARENT:
        os._exit(1)
    return resize_image(*args)


def remove_partial_files(out: Path) -> int:
    """Delete the temporary files a killed run left (``write_atomic``'s ``.<name>.*.part``); how many."""
    partial = list(out.rglob(".*.part")) if out.is_dir() else []
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def check_config(cfg: DictConfig) -> None:
    if "train_dir" not in cfg.data:
        raise InvalidValueError(f"data={cfg.data.get('_target_')}: prepare works on ImageFolder trees (data=imagenet, "
                                "or another data config with train_dir/val_dir)")
    if cfg.data.preprocess.resize is None:
        raise InvalidValueError("data.preprocess.resize=null: nothing to prepare; give the smaller side, e.g. 256")
    integer("jpeg_quality", cfg.jpeg_quality, 1, 100, unit="95 keeps the detail a 224 crop sees")
    positive_int("workers", cfg.workers, null="all cores", unit="processes")
    root, out = Path(cfg.data.root).expanduser().resolve(), Path(cfg.out).expanduser().resolve()
    if out == root or root in out.parents:
        raise InvalidValueError(f"out={cfg.out} is inside data.root={cfg.data.root}; the prepared images would be "
                                "read as more images of the tree. Give a folder outside it.")


@task_wrapper("prepare.json", check=check_config)
def prepare(cfg: DictConfig, run: Run) -> None:
    root, out = Path(cfg.data.root).expanduser(), Path(cfg.out).expanduser()
    splits = list(dict.fromkeys(d for d in (cfg.data.train_dir, cfg.data.val_dir, cfg.data.get("test_dir")) if d))
    side, quality = int(cfg.data.preprocess.resize), int(cfg.jpeg_quality)
    stale = remove_partial_files(out)
    pairs = images_to_prepare(root, out, splits)
    todo = [(src, dst, side, quality) for src, dst in pairs if not dst.exists()]
    log.info("%d images under %s (%s): %d already in %s, %d to resize to %d px%s", len(pairs), root,
             ", ".join(splits), len(pairs) - len(todo), out, len(todo), side,
             f"; removed {stale} partial files of an interrupted run" if stale else "")
    corrupt: list[str] = []
    workers = cfg.workers or os.cpu_count() or 1
    with ProcessPoolExecutor(workers, initializer=die_with_parent) as pool:
        results = pool.map(_resize_task, todo, chunksize=max(1, min(64, len(todo) // (8 * workers))))
        for (src, *_), problem in progress(zip(todo, results, strict=True), len(todo), "prepare", unit="img"):
            if problem is not None:
                corrupt.append(f"{src}: {problem}")
                log.warning("skipped %s (cannot be decoded: %s)", src, problem)
    if corrupt:
        (run.dir / "corrupt.txt").write_text("\n".join(corrupt) + "\n")
        log.warning("%d of %d images could not be decoded and are not in %s; listed in %s", len(corrupt), len(pairs),
                    out, run.dir / "corrupt.txt")
    run.record.update(images=len(pairs), written=len(todo) - len(corrupt), already_done=len(pairs) - len(todo),
                      corrupt=len(corrupt), corrupt_files=corrupt, out=str(out), side=side)
    log.info("prepared %s: use data.root=%s", out, out)


main = hydra_entry_point(prepare, "prepare")

if __name__ == "__main__":
    main()
