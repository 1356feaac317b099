"""Crash-safe file writes: the one way shardlab writes a file.

Every file (checkpoints, datasets, configs, results, reports, pictures) is written to a temp file
in the target's folder, flushed and fsynced, then renamed over the target with ``os.replace``; on
any exception the temp file is removed and the target keeps its old content. A reader therefore
sees the old file or the new one, never half of one. Temp files are named ``.<name>.tmp-<random>``
(hidden, beside the target, so the rename never crosses a file system); :func:`is_temp_name`
recognises them (and the ``<name>.tmp-<pid>`` names of older versions) for clean-ups.

Files are created with mode 0666 less the umask, like a plain ``open`` (``tempfile.mkstemp``
would make them owner-only). A leaf module: it imports nothing of shardlab, torch or matplotlib.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import IO, Any, Callable, Iterator, TypeVar, Union

T = TypeVar("T")
PathLike = Union[str, "os.PathLike[str]"]
TEMP_MARK = ".tmp-"  # in every temp file name, old and new
_MODES = ("w", "wb")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of this module's temp files (a save killed half-way leaves one)."""
    return TEMP_MARK in name


def _temp_path(folder: str, name: str) -> str:
    return os.path.join(folder, f".{name}{TEMP_MARK}{secrets.token_hex(4)}")


def _claim_temp(target: str, create: Callable[[str], T]) -> tuple[T, str]:
    """``create(path)`` at a fresh temp name beside ``target``, retried with another name while the
    name is taken (``create`` raises FileExistsError): (what ``create`` returned, the path)."""
    folder, name = os.path.split(os.path.abspath(target))
    for _ in range(100):
        tmp = _temp_path(folder, name)
        try:
            return create(tmp), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name beside {target}")


def _create_temp(target: str) -> tuple[int, str]:
    """A new, empty temp file beside ``target``: (descriptor, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return _claim_temp(target, lambda tmp: os.open(tmp, flags, 0o666))


def fsync_dir(folder: PathLike) -> None:
    """fsync a folder, so a rename inside it survives a power cut (POSIX)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w", *, encoding: str = "utf-8", make_parents: bool = False,
                 sync_dir: bool = False) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` for writing; on a clean exit it is flushed, fsynced and
    renamed over ``path``, on an exception it is removed (and ``path`` is left as it was).

    ``mode`` is ``"w"`` (text, ``encoding``) or ``"wb"``. ``make_parents`` creates the folder;
    ``sync_dir`` also fsyncs the folder after the rename (checkpoints).
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_write mode must be one of {', '.join(_MODES)}, got {mode!r}")
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    if make_parents:
        os.makedirs(folder, exist_ok=True)
    fd, tmp = _create_temp(target)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _publish(tmp, target, folder, sync_dir)


def _publish(tmp: str, target: str, folder: str, sync_dir: bool) -> None:
    """Rename the finished temp file over ``target`` (removing it if that fails), then maybe fsync the folder."""
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if sync_dir:
        fsync_dir(folder)


def save_with(path: PathLike, save: Callable[[IO[Any]], Any], mode: str = "wb", **options: Any) -> str:
    """Write ``path`` atomically by calling ``save(handle)``, e.g. ``lambda h: torch.save(obj, h)`` or
    ``lambda h: fig.savefig(h, format="png")``; ``options`` as for :func:`atomic_write`. Returns the path."""
    with atomic_write(path, mode, **options) as handle:
        save(handle)
    return os.fspath(path)


def write_text(path: PathLike, text: str, **options: Any) -> str:
    """Write ``text`` (UTF-8 unless ``encoding=``) atomically; returns the path."""
    return save_with(path, lambda handle: handle.write(text), "w", **options)


def write_bytes(path: PathLike, data: bytes, **options: Any) -> str:
    """Write ``data`` atomically; returns the path."""
    return save_with(path, lambda handle: handle.write(data), "wb", **options)


def write_json(path: PathLike, obj: Any, *, indent: int | None = 2, make_parents: bool = False,
               **dump_options: Any) -> str:
    """Write ``obj`` as JSON (``indent`` 2, ending in a newline) atomically; ``dump_options`` go to
    ``json.dumps`` (``allow_nan=False``, ``default=str``, ...). Returns the path."""
    return write_text(path, json.dumps(obj, indent=indent, **dump_options) + "\n", make_parents=make_parents)


def link_atomic(source: PathLike, target: PathLike, *, sync_dir: bool = False) -> str:
    """Make ``target`` a hard link to ``source``, replacing any old ``target`` atomically (a hard link
    costs nothing, so ``last.ckpt`` points at the newest ``step-*.ckpt`` without a copy)."""
    target = os.fspath(target)
    _, tmp = _claim_temp(target, lambda tmp: os.link(source, tmp))
    _publish(tmp, target, os.path.dirname(os.path.abspath(target)), sync_dir)
    return target
