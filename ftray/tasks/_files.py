"""Reading user data files (CSV, JSONL) with errors that name the file, the row and the column."""

from __future__ import annotations

import csv
import json
import os

from ftray.errors import FtrayInputError


def read_rows(path: str, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a .csv (header line first) or .jsonl file as dicts of strings.

    Row numbers in errors count data rows from 1 (the CSV header is not a row).
    """
    if not os.path.isfile(path):
        raise FtrayInputError(f"data file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    elif ext in (".jsonl", ".json"):
        rows, columns = [], []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise FtrayInputError(f"{path}: line {i} is not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise FtrayInputError(f"{path}: line {i} is not a JSON object")
                rows.append({k: "" if v is None else str(v) for k, v in row.items()})
        columns = sorted({k for r in rows for k in r})
    else:
        raise FtrayInputError(f"data file {path!r}: unknown extension {ext!r}; use .csv or .jsonl")
    if not rows:
        raise FtrayInputError(f"data file {path!r} is empty (no data rows)")
    for col in required:
        if col not in columns:
            raise FtrayInputError(f"data file {path!r} has no column {col!r}; its columns are: {', '.join(columns)}")
    if ext != ".csv":
        for i, row in enumerate(rows, 1):
            for col in required:
                if col not in row:
                    raise FtrayInputError(f"{path}: row {i} has no {col!r}")
    return rows
