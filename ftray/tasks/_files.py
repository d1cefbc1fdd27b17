"""Reading user data files (CSV, JSONL) with errors that name the file, the row and the column.

Every way a file can be unreadable (not UTF-8, a NUL byte, broken CSV quoting, a header with a
duplicated or empty column name, a cell over the size limit, a JSONL line that is not an object)
raises one FtrayInputError line naming the file, the line or row, and the cause: the CLI turns it
into exit status 2 before anything starts, instead of a traceback hours into a sweep.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os

from ftray.errors import FtrayInputError


def read_rows(path: str, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a .csv (header line first) or .jsonl file as dicts of strings.

    Files are UTF-8; a UTF-8 byte-order mark at the start is skipped. Refused, each with the line:
    a byte that is not UTF-8, a UTF-16 file, a NUL byte; in CSV (read with csv's strict quoting) an
    unclosed quote, text after a closing quote, a row with more cells than the header, a header
    with an empty or repeated column name, and a cell over Python csv's field size limit (131,072
    characters unless something in this process changed `csv.field_size_limit`); in JSONL a line
    that is not a JSON object or repeats a key. The cell limit is kept, not raised: a cell that long
    is tens of thousands of tokens, past any context a LoRA sweep trains on, and far more often an
    unclosed quote that swallowed the rest of the file. A CSV row with fewer cells than the header
    lacks the missing columns (an error only where a template, meta_columns or `required` names
    one). Blank lines are skipped.

    Row numbers in errors count data rows from 1 (the CSV header and blank lines are not rows);
    line numbers count the file's lines from 1 (a row's line is the one it starts on).
    """
    if not os.path.isfile(path):
        raise FtrayInputError(f"data file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".jsonl", ".json"):
        raise FtrayInputError(f"data file {path!r}: unknown extension {ext!r}; use .csv or .jsonl")
    text = _read_text(path)
    if ext == ".csv":
        rows, columns = _csv_rows(path, text)
    else:
        rows = _jsonl_rows(path, text, ext)
        columns = sorted({k for r in rows for k in r})
    if not rows:
        raise FtrayInputError(f"data file {path!r} is empty (no data rows)")
    for col in required:
        if col not in columns:
            raise FtrayInputError(f"data file {path!r} has no column {col!r}; its columns are: {', '.join(columns)}")
    for i, row in enumerate(rows, 1):
        for col in required:
            if col not in row:
                raise FtrayInputError(f"{path}: row {i} has no {col!r}")
    return rows


def _read_text(path: str) -> str:
    """The file decoded as UTF-8 (without a BOM), NUL-free; errors name the line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FtrayInputError(f"data file {path!r} cannot be read ({e.strerror or e})") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        # Checked before NULs: UTF-16 text is full of them and the cause is the encoding.
        raise FtrayInputError(f"{path}: line 1: the file is UTF-16 (it starts with a UTF-16 byte-order mark); "
                              "save it as UTF-8")
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = start + e.start
        raise FtrayInputError(
            f"{path}: line {_line_at(data, offset)}: byte 0x{data[offset]:02x} at offset {offset} is not UTF-8 "
            "(is the file Latin-1 or Windows-1252? save it as UTF-8)"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        # Python >= 3.11's csv reads NULs into cells; a NUL in training text means a binary or
        # mis-encoded file, never data the user meant.
        raise FtrayInputError(f"{path}: line {_line_at(text, nul)} contains a NUL byte (a binary or UTF-16 file?)")
    return text


def _line_at(text: str | bytes, index: int) -> int:
    # splitlines() of both str and bytes would also split on characters that are not line ends
    # for csv or for the JSONL reader (str.splitlines splits on \x1c, \u2028, ...): count \n, \r\n, \r.
    head = text[:index]
    nl, cr = ("\n", "\r") if isinstance(text, str) else (b"\n", b"\r")
    return 1 + head.count(nl) + head.count(cr) - head.count(cr + nl)


def _csv_rows(path: str, text: str) -> tuple[list[dict], list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, _ = _next(reader, path, "the header")
    if header is None:
        return [], []
    _check_header(path, header)
    rows = []
    while True:
        cells, line = _next(reader, path, f"row {len(rows) + 1}")
        if cells is None:
            return rows, header
        if not cells:
            continue
        if len(cells) > len(header):
            raise FtrayInputError(
                f"{path}: row {len(rows) + 1} (line {line}) has {len(cells)} cells but the header "
                f"names {len(header)} columns (an unquoted comma in a cell? quote cells that contain commas)"
            )
        rows.append(dict(zip(header, cells)))


def _next(reader, path: str, what: str) -> tuple[list[str] | None, int]:
    """The next record and the line it starts on (a quoted cell may span lines); None at the end."""
    line = reader.line_num + 1
    try:
        return next(reader), line
    except StopIteration:
        return None, line
    except csv.Error as e:
        if "field limit" in str(e):
            cause = f"a cell is longer than {csv.field_size_limit():,} characters (an unclosed quote?)"
        elif "end of data" in str(e):
            cause = "a quoted cell that starts in this row is never closed (a missing closing quote)"
        else:
            cause = f"it is not valid CSV ({e})"
        where = f"{what} (line {line})" if what != "the header" else f"line {line} (the header)"
        raise FtrayInputError(f"{path}: {where}: {cause}") from None


def _check_header(path: str, header: list[str]) -> None:
    if not header:
        raise FtrayInputError(f"{path}: line 1 (the header) is empty; the first line must name the columns")
    for position, name in enumerate(header, 1):
        if not name.strip():
            raise FtrayInputError(f"{path}: line 1 (the header): column {position} has no name; "
                                  f"the header is {','.join(header)!r}")
    repeated = sorted({name for name in header if header.count(name) > 1}, key=header.index)
    if repeated:
        raise FtrayInputError(f"{path}: line 1 (the header): column name{'s' if len(repeated) > 1 else ''} "
                              f"{', '.join(map(repr, repeated))} appear{'' if len(repeated) > 1 else 's'} "
                              "more than once; each column needs its own name")


class _RepeatedKey(Exception):
    pass


def _object(pairs: list[tuple[str, object]]) -> dict:
    # json.loads keeps the last of repeated keys without a word, as csv.DictReader does with
    # repeated columns: a value the user wrote would vanish.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        keys = [k for k, _ in pairs]
        raise _RepeatedKey(next(k for k in keys if keys.count(k) > 1))
    return obj


JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _jsonl_rows(path: str, text: str, ext: str) -> list[dict]:
    hint = "; a .json file is read as JSON Lines, one object per line" if ext == ".json" else ""
    rows = []
    # Universal newlines, as reading the file in text mode did; str.splitlines would also split
    # inside strings at characters JSON allows raw (\u2028, \x1c, ...).
    for i, line in enumerate(io.StringIO(text), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_object)
        except json.JSONDecodeError as e:
            raise FtrayInputError(f"{path}: line {i} is not valid JSON ({e.msg}, column {e.colno}){hint}") from None
        except _RepeatedKey as e:
            raise FtrayInputError(f"{path}: line {i}: the key {e.args[0]!r} appears more than once "
                                  "in an object") from None
        except RecursionError:
            raise FtrayInputError(f"{path}: line {i} nests JSON too deeply to read") from None
        if not isinstance(row, dict):
            raise FtrayInputError(f"{path}: line {i} is a JSON {JSON_TYPES.get(type(row), 'value')}, "
                                  f"not an object{hint}")
        rows.append({k: "" if v is None else str(v) for k, v in row.items()})
    return rows
