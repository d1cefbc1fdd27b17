"""Where run folders live: a local path or any URI pyarrow understands (s3://, gs://, file://, ...).

Ray Tune writes its own files through pyarrow; ftray's few files (the run record, the sweep copy, the
report) go through these helpers, so `ftray report` and `ftray resume` read a run back from either.
"""

from __future__ import annotations

import os
import posixpath


def is_uri(path: str) -> bool:
    return "://" in str(path)


def normalize(path: str) -> str:
    """An absolute local path, or the URI as given (without a trailing slash)."""
    return str(path).rstrip("/") if is_uri(path) else os.path.abspath(os.path.expanduser(str(path)))


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_uri(base) else os.path.join(base, *parts)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_uri(path) else os.path.basename(path.rstrip(os.sep))


def dirname(path: str) -> str:
    if is_uri(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(path.rstrip(os.sep))


def _fs(path: str):
    import pyarrow.fs

    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def exists(path: str) -> bool:
    import pyarrow.fs

    fs, p = _fs(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def is_file(path: str) -> bool:
    import pyarrow.fs

    fs, p = _fs(path)
    return fs.get_file_info(p).type == pyarrow.fs.FileType.File


def read_text(path: str) -> str:
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file; a crash mid-write never leaves a half file behind."""
    if not is_uri(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    fs, p = _fs(path)  # object stores replace an object whole; no temporary needed
    fs.create_dir(posixpath.dirname(p), recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def list_names(path: str) -> list[str]:
    """Names of the entries directly inside a folder (empty when it does not exist)."""
    import pyarrow.fs

    fs, p = _fs(path)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(p, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(posixpath.basename(i.path) for i in infos)


def check_writable(path: str, field: str) -> None:
    """Fail at the start, not after hours of training, when results could not be saved."""
    from ftray.errors import FtrayInputError

    probe = join(path, f".ftray-write-test-{os.getpid()}")
    try:
        write_text(probe, "ok")
        fs, p = _fs(probe)
        fs.delete_file(p)
    except (OSError, ValueError) as e:
        raise FtrayInputError(f"{field} {path!r} cannot be written: {getattr(e, 'strerror', None) or e}") from None


def local_copy(path: str, dest_dir: str) -> str:
    """A local path to read `path` from: itself when local, else a download into dest_dir."""
    if not is_uri(path):
        return path
    import pyarrow.fs

    fs, p = _fs(path)
    os.makedirs(dest_dir, exist_ok=True)
    pyarrow.fs.copy_files(p, dest_dir, source_filesystem=fs)
    return dest_dir


def remove_tree(path: str) -> None:
    """Delete a folder and everything in it (no error when it is already gone)."""
    import shutil

    if not is_uri(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, p = _fs(path)
    try:
        fs.delete_dir(p)
    except FileNotFoundError:
        pass
