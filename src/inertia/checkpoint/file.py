"""The checkpoint file: a safetensors container whose header's ``__metadata__`` holds one JSON
document, written atomically and read whole.

Writing (:func:`write_atomically`): the bytes are made in memory, written to a temporary file
in the target's directory, flushed and synced, renamed over the target, and the directory is
synced. A crash or a kill at any moment leaves the previous file whole. A temporary file is
named after its host and process, so that a later save removes those of processes that no
longer run (never a live process' own). A file replaced keeps its permission bits. On
Windows, where a file another program holds open cannot be replaced, the rename is tried
again for about two seconds; a directory is synced where the system allows it.

Reading (:func:`read`): the file is read in one call (a save replacing it meanwhile cannot mix
two versions) and checked: a whole safetensors file, inertia's metadata, its format and
version, and the tensors it lists.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import socket
import stat
import time
from typing import Any

import numpy as np

from inertia._processes import process_exists
from inertia.checkpoint.arrays import DTYPE_OF_CODE, ArrayBytes

FORMAT = "inertia.optimizer-checkpoint"
FORMAT_VERSION = "1.0"
METADATA_KEY = "inertia"

_TEMP_SUFFIX = ".tmp"
_POSIX = os.name == "posix"
# Windows refuses to replace a file that another program holds open (a reader, a virus
# scanner, an indexer), as a rule for a moment only: the waits between tries of the rename.
_REPLACE_WAITS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)
# fsync errors of file systems that cannot sync a directory.
_UNSYNCABLE = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.ENOSYS}


# ----------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------
def writable_target(path: str) -> str:
    """The file a save to ``path`` replaces: ``path`` made absolute, or the file a symbolic
    link at ``path`` points to (the link stays). Raises, naming ``path``, where no file can
    be written: a directory, a directory that does not exist, a file where a directory
    should be."""
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise IsADirectoryError(f"Cannot save to path={path!r}: it names a directory (it ends in a separator).")
    target = os.path.realpath(path)
    link = f" (a symbolic link to {target!r})" if target != os.path.abspath(path) else ""
    if os.path.isdir(target):
        raise IsADirectoryError(f"Cannot save to path={path!r}{link}: it is a directory.")
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise NotADirectoryError(f"Cannot save to path={path!r}{link}: {directory!r} is not a directory.")
        raise FileNotFoundError(f"Cannot save to path={path!r}{link}: its directory {directory!r} does not exist.")
    return target


def host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _temp_pattern(base: str) -> "re.Pattern[str]":
    return re.compile(rf"^\.{re.escape(base)}\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[0-9a-f]{{8}}{re.escape(_TEMP_SUFFIX)}$")


def write_atomically(target: str, tensors: dict[str, ArrayBytes], metadata: dict[str, str], path: str) -> None:
    """Write the safetensors file of ``tensors`` and ``metadata`` to ``target`` (from
    :func:`writable_target`; ``path``: as the user gave it, for messages)."""
    import safetensors

    directory, base = os.path.split(target)
    _remove_stale_temporaries(directory, base)
    # The name says whose it is (host and pid), so that a later save may remove it once that
    # process is gone, and never while it may still be writing.
    temporary = os.path.join(directory, f".{base}.{host_tag()}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")
    # The bytes are made in memory and written through this descriptor: safetensors'
    # serialize_file (0.8) writes through a temporary file of its own, which a killed
    # process would leave behind under a name that says nothing of whose it is.
    data = safetensors.serialize(_serializer_specs(safetensors, tensors), metadata=metadata)
    # O_BINARY: Windows opens a descriptor in text mode otherwise (each \n written as \r\n).
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            _keep_mode(handle.fileno(), target)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        _replace(temporary, target, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _sync_directory(directory)  # the new name is on disk


def _serializer_specs(safetensors: Any, tensors: dict[str, ArrayBytes]) -> dict:
    """safetensors' input: ``TensorSpec`` pointers (0.8 and later: no copy of the bytes) or
    ``{"dtype", "shape", "data"}`` dicts (earlier versions)."""
    spec = getattr(safetensors, "TensorSpec", None)
    if spec is None:
        return {n: {"dtype": t.dtype, "shape": list(t.shape), "data": t.data.tobytes()} for n, t in tensors.items()}
    return {
        n: spec(dtype=t.dtype, shape=list(t.shape), data_ptr=t.data.ctypes.data, data_len=t.data.nbytes)
        for n, t in tensors.items()
    }


def _keep_mode(descriptor: int, target: str) -> None:
    """Give the new file the permission bits of the file it replaces (a private checkpoint
    stays private), where there is one and the file system keeps them (POSIX)."""
    if not _POSIX:
        return
    try:
        os.fchmod(descriptor, stat.S_IMODE(os.stat(target).st_mode) & 0o777)
    except OSError:  # no file yet, or a file system without POSIX modes (FAT, some network shares)
        pass


def _replace(temporary: str, target: str, path: str) -> None:
    waits = iter(() if _POSIX else _REPLACE_WAITS)
    while True:
        try:
            os.replace(temporary, target)
            return
        except PermissionError as error:
            wait = next(waits, None)
            if wait is None:
                if _POSIX:
                    raise
                raise PermissionError(
                    error.errno,
                    f"Cannot save to path={path!r}: the file could not be replaced ({error.strerror}); another "
                    "program may hold it open. The previous file is unchanged.",
                ) from error
            time.sleep(wait)


def _sync_directory(directory: str) -> None:
    """Make the rename durable where the system can (POSIX: the directory entry is data of
    the directory; Windows cannot open a directory to sync it)."""
    if not _POSIX:
        return
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a directory one may write but not read (mode 0o300): the file is in place
        return
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in _UNSYNCABLE:
            raise
    finally:
        os.close(descriptor)


def _remove_stale_temporaries(directory: str, base: str) -> None:
    """Remove temporary files of earlier saves to ``base`` whose process is gone (killed
    mid-write): only this host's, never this process' own, never a live process'."""
    if not _POSIX:  # no way here to tell a live process id from a reused one
        return
    pattern, host, own = _temp_pattern(base), host_tag(), os.getpid()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for entry in names:
        match = pattern.match(entry)
        if match is None or match["host"] != host or int(match["pid"]) == own or process_exists(int(match["pid"])):
            continue
        try:
            os.unlink(os.path.join(directory, entry))
        except OSError:
            pass




# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------
def read(path: str) -> tuple[dict, dict[str, ArrayBytes]]:
    """The metadata document and the arrays of the checkpoint ``path``, checked whole."""
    with open(path, "rb") as handle:  # one read: a save replacing the file meanwhile cannot mix two versions
        data = handle.read()
    if not data:
        raise ValueError(f"{path!r} is not an inertia checkpoint: the file is empty.")
    import safetensors

    try:
        listed = safetensors.deserialize(data)
    except Exception as error:  # safetensors raises its own SafetensorError on any malformed input
        raise ValueError(f"{path!r} is not an inertia checkpoint: it is not a whole safetensors file ({error}).") from None
    length = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise ValueError(
            f"{path!r} is not an inertia checkpoint: it is a safetensors file without inertia's metadata "
            f"(no __metadata__[{METADATA_KEY!r}] entry). Optimizer checkpoints are written by inertia.save."
        )
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path!r} is not an inertia checkpoint: its metadata is not JSON ({error}).") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ValueError(f"{path!r} is not an inertia checkpoint: its metadata names the format {found!r}, not {FORMAT!r}.")
    _check_version(path, document)
    arrays: dict[str, ArrayBytes] = {}
    for name, info in listed:
        dtype = DTYPE_OF_CODE.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path!r}: tensor {name!r} has dtype {info['dtype']}, which no inertia optimizer holds.")
        arrays[name] = ArrayBytes(dtype, tuple(info["shape"]), np.frombuffer(info["data"], np.uint8))
    table = document.get("tensors")
    if not isinstance(table, dict) or set(table) != set(arrays):
        listed_names = set(table) if isinstance(table, dict) else set()
        raise ValueError(
            f"{path!r} is not a consistent inertia checkpoint: its metadata lists the tensors "
            f"{sorted(listed_names - set(arrays))} that it does not hold, and it holds {sorted(set(arrays) - listed_names)} "
            "that its metadata does not list."
        )
    malformed = sorted(name for name, info in table.items() if not isinstance(info, dict) or not isinstance(info.get("role"), str))
    if malformed:
        raise ValueError(f"{path!r} is not a consistent inertia checkpoint: its metadata gives the tensors {malformed} no role.")
    return document, arrays


def _check_version(path: str, document: dict) -> None:
    version = document.get("format_version")
    match = re.fullmatch(r"(\d+)\.(\d+)", version) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"{path!r} is not an inertia checkpoint: its format version {version!r} is not 'major.minor'.")
    major, supported = int(match[1]), int(FORMAT_VERSION.split(".")[0])
    if major > supported:
        raise ValueError(
            f"{path!r} was written in checkpoint format {version} by inertia {document.get('inertia_version')}; this "
            f"inertia reads format {supported}.x. Upgrade inertia to load it."
        )
    if major < supported:  # pragma: no cover - there is no older format yet
        raise ValueError(f"{path!r} is in checkpoint format {version}, older than any this inertia reads.")
