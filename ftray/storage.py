"""Where run folders live: a local path or any URI pyarrow understands (s3://, gs://, file://, ...).

Ray Tune writes its own files through pyarrow; ftray's few files (the run record, the sweep copy, the
report) go through these helpers, so `ftray report` and `ftray resume` read a run back from either.

A URI may carry pyarrow's options in a query string (`s3://bucket/runs?endpoint_override=host:9000&
scheme=http`): join, dirname, basename and normalize work on the path and keep the query at the end.
Credentials in a URI (`s3://KEY:SECRET@bucket/...`, or `access_key=`, `secret_key=`, `session_token=`
in the query) reach pyarrow but must never be shown or recorded: print and store `redact(uri)`.
Better still, keep them out of URIs; pyarrow reads AWS_ACCESS_KEY_ID and friends from the environment.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid

# Query parameters that hold secrets, matched as substrings of the lowercased name (pyarrow's S3
# access_key/secret_key/session_token, Azure's account_key/sas_token, a signed URL's signature).
SECRET_PARAMS = ("key", "secret", "token", "password", "passwd", "credential", "signature")
SECRET_PARAM_NAMES = ("sig", "external_id")


def is_uri(path: str) -> bool:
    return "://" in str(path)


def _split_query(uri: str) -> tuple[str, str]:
    """("s3://b/p", "?endpoint_override=...") from "s3://b/p?endpoint_override=..."; query "" when none."""
    base, sep, query = uri.partition("?")
    return base, sep + query


def normalize(path: str) -> str:
    """An absolute local path, or the URI as given (without a trailing slash on its path)."""
    if not is_uri(path):
        return os.path.abspath(os.path.expanduser(str(path)))
    base, query = _split_query(str(path))
    return base.rstrip("/") + query


def join(base: str, *parts: str) -> str:
    if not is_uri(base):
        return os.path.join(base, *parts)
    path, query = _split_query(str(base))
    return posixpath.join(path, *parts) + query


def basename(path: str) -> str:
    if not is_uri(path):
        return os.path.basename(path.rstrip(os.sep))
    return posixpath.basename(_split_query(path)[0].rstrip("/"))


def dirname(path: str) -> str:
    if is_uri(path):
        base, query = _split_query(path)
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}{query}"
    return os.path.dirname(path.rstrip(os.sep))


def local_path(path: str) -> str | None:
    """The local file system path of a local path or a file:// URI; None for any other store."""
    path = str(path)
    if not is_uri(path):
        return path
    if not path.startswith("file://"):
        return None
    import pyarrow.fs

    # pyarrow's own parse, so percent-escapes and the query mean here what they mean to Ray Tune.
    fs, p = pyarrow.fs.FileSystem.from_uri(path)
    return p if isinstance(fs, pyarrow.fs.LocalFileSystem) else None


def redact(uri: str) -> str:
    """The URI with its credentials replaced by ***, to print or record; local paths unchanged.

    `s3://KEY:SECRET@bucket/p` -> `s3://***@bucket/p`; `?secret_key=abc&scheme=http` ->
    `?secret_key=***&scheme=http` (also access_key, session_token, and any parameter whose name
    holds key, secret, token, password, credential or signature).
    """
    uri = str(uri)
    if not is_uri(uri):
        return uri
    scheme, rest = uri.split("://", 1)
    rest, query = _split_query(rest)
    at = _user_info_end(rest)
    if at >= 0:
        rest = "***" + rest[at:]
    if query:
        query = "?" + "&".join(_redact_param(p) for p in query[1:].split("&"))
    return f"{scheme}://{rest}{query}"


def _user_info_end(rest: str) -> int:
    """The index of the "@" that ends the user info of a URI's part after "://" (query cut), or -1."""
    authority = rest.split("/", 1)[0]
    if "@" in authority:
        return authority.rindex("@")
    if ":" in authority and not authority.rsplit(":", 1)[1].isdigit() and "@" in rest:
        # A secret with an unescaped "/" cuts the authority short of its "@" (a host:port does
        # not look like that): hiding part of the path as well beats showing part of the secret.
        return rest.rindex("@")
    return -1


def _redact_param(param: str) -> str:
    name, sep, value = param.partition("=")
    lowered = name.lower()
    secret = lowered in SECRET_PARAM_NAMES or any(word in lowered for word in SECRET_PARAMS)
    return f"{name}{sep}***" if secret and value else param


def _scrub(text: str, uri: str) -> str:
    """`text` (an error message from pyarrow, say) without any of the secrets in `uri`."""
    from urllib.parse import unquote

    uri = str(uri)
    if not is_uri(uri):
        return text
    text = text.replace(uri, redact(uri))
    rest, query = _split_query(uri.split("://", 1)[1])
    at = _user_info_end(rest)
    pieces = [rest[:at], *rest[:at].split(":")] if at > 0 else []
    pieces += [p.partition("=")[2] for p in query[1:].split("&") if query and _redact_param(p) != p]
    for piece in sorted({q for p in pieces for q in (p, unquote(p)) if len(q) >= 3}, key=len, reverse=True):
        text = text.replace(piece, "***")
    return text


# S3 credentials a URI may carry, as pyarrow's query parameters, and the environment variable each
# belongs in (which pyarrow, boto and Ray's workers on this machine read).
S3_CREDENTIALS = {"access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY",
                  "session_token": "AWS_SESSION_TOKEN"}


def without_credentials(uri: str) -> str:
    """An s3:// URI with its credentials (`s3://KEY:SECRET@bucket/...`, or `access_key=` / `secret_key=` /
    `session_token=` in the query, which pyarrow itself refuses) moved into this process's environment.

    Ray Tune records its storage path in its own experiment files, out of ftray's reach: handed the
    URI without them, it records none. Ray's local workers inherit the environment; on a cluster the
    nodes need credentials of their own (an IAM role, or .ftray/secrets.env, see cluster.yaml).
    """
    from urllib.parse import unquote

    uri = str(uri)
    if not uri.startswith("s3://"):
        return uri
    rest, query = _split_query(uri[len("s3://"):])
    at = _user_info_end(rest)
    if at >= 0:
        key, _, secret = rest[:at].partition(":")
        os.environ.update({"AWS_ACCESS_KEY_ID": unquote(key), **({"AWS_SECRET_ACCESS_KEY": unquote(secret)}
                                                                  if secret else {})})
        rest = rest[at + 1:]
    kept = []
    for param in query[1:].split("&") if query else []:
        name, _, value = param.partition("=")
        if name in S3_CREDENTIALS:
            os.environ[S3_CREDENTIALS[name]] = unquote(value)
        else:
            kept.append(param)
    return f"s3://{rest}" + ("?" + "&".join(kept) if kept else "")


def uri_of(base: str, fs_path: str) -> str:
    """`fs_path` as pyarrow gives it ("bucket/runs/x", scheme and query gone), as a URI of `base`'s store."""
    if not is_uri(base) or is_uri(fs_path):
        return fs_path
    head, query = _split_query(base)
    return f"{head.split('://', 1)[0]}://{fs_path}{query}"


def fs_path(path: str) -> str:
    """The path within its file system, as pyarrow (and Ray) give it: no scheme, no query."""
    return _fs(path)[1]


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
    """Write a whole file atomically: readers see the old file or the new one, never a part.

    Local paths and file:// URIs write a temporary file beside the target and rename it over the
    target. Object stores (s3://, gs://, ...) need no temporary: one output stream writes one
    object, which appears (or replaces the old one) whole when the stream is closed: on S3 a
    single PUT, or a multipart upload that is completed only at close; a crash before that leaves
    the previous object.
    """
    local = local_path(path)
    if local is not None:
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        # Unique per call, not per process: two threads writing the same file must not share one.
        tmp = f"{local}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # else a power cut after the rename can leave an empty file
            os.replace(tmp, local)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return
    fs, p = _fs(path)
    fs.create_dir(posixpath.dirname(p), recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def list_names(path: str, folders_only: bool = False) -> list[str]:
    """Names of the entries directly inside a folder (empty when it does not exist); with
    `folders_only`, of the folders among them."""
    import pyarrow.fs

    fs, p = _fs(path)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(p, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(posixpath.basename(i.path) for i in infos
                  if not folders_only or i.type == pyarrow.fs.FileType.Directory)


def check_writable(path: str, field: str) -> None:
    """Fail at the start, not after hours of training, when results could not be saved."""
    from ftray.errors import FtrayInputError

    probe = join(path, f".ftray-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write_text(probe, "ok")
        fs, p = _fs(probe)
        fs.delete_file(p)
    except (OSError, ValueError) as e:
        cause = _scrub(str(getattr(e, "strerror", None) or e), path)
        cause = " ".join(cause.split())  # pyarrow's messages run over several lines; ours is one
        raise FtrayInputError(f"{field} {redact(path)!r} cannot be written: {cause}") from None


def local_copy(path: str, dest_dir: str) -> str:
    """A local path to read `path` from: itself when local, else a download into dest_dir."""
    if not is_uri(path):
        return path
    import pyarrow.fs

    fs, p = _fs(path)
    os.makedirs(dest_dir, exist_ok=True)
    pyarrow.fs.copy_files(p, dest_dir, source_filesystem=fs)
    return dest_dir


def upload_tree(local_dir: str, path: str) -> None:
    """Copy a local folder's files to `path` (a local folder or a URI), creating it."""
    import pyarrow.fs

    local = local_path(path)
    if local is not None:
        shutil.copytree(local_dir, local, dirs_exist_ok=True)
        return
    fs, p = _fs(path)
    fs.create_dir(p, recursive=True)
    pyarrow.fs.copy_files(local_dir, p, destination_filesystem=fs)


def remove_file(path: str) -> None:
    """Delete a file (no error when it is already gone)."""
    fs, p = _fs(path)
    try:
        fs.delete_file(p)
    except FileNotFoundError:
        pass


def remove_tree(path: str) -> None:
    """Delete a folder and everything in it (no error when it is already gone)."""
    if not is_uri(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, p = _fs(path)
    try:
        fs.delete_dir(p)
    except FileNotFoundError:
        pass
