"""Loading a sweep file (`sweeps/*.py`): every way it can fail becomes one line naming the file and line.

A sweep file is Python, so loading it runs its code: anything it raises at import is the user's
error, not ftray's, and is reported as such (exit status 2); `FTRAY_DEBUG=1` (or `--debug`) shows
the traceback instead.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import traceback
from pathlib import Path

from ftray.errors import FtrayInputError


def debug() -> bool:
    return os.environ.get("FTRAY_DEBUG", "") not in ("", "0")


def load_sweep(path: str | Path):
    """Import a sweep file and return its module-level `sweep`; errors name the file and line."""
    from ftray.spec.sweep import Sweep

    path = Path(path)
    if not path.is_file():
        raise FtrayInputError(f"sweep file {str(path)!r} does not exist")
    if path.suffix != ".py":
        raise FtrayInputError(f"sweep file {str(path)!r} must be a Python file (.py)")
    try:
        source = path.read_text(encoding="utf-8")
        compile(source, str(path), "exec")
    except SyntaxError as e:
        raise FtrayInputError(f"sweep file {str(path)!r} has a syntax error at line {e.lineno}: {e.msg}") from None
    except (UnicodeDecodeError, ValueError) as e:  # not UTF-8, or a NUL byte in the source
        raise FtrayInputError(f"sweep file {str(path)!r} cannot be read as Python source: {e}") from None
    module_name = "ftray_sweep_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except FtrayInputError as e:
        raise FtrayInputError(f"{path}{_line_in(e, path, field=True)}: {e}") from None
    except Exception as e:
        if debug():
            raise
        message = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise FtrayInputError(f"{path}{_line_in(e, path)}: {type(e).__name__}"
                              + (f": {message}" if message else "") + _keyword_hint(e, vars(module))
                              + " (set FTRAY_DEBUG=1 for the traceback)") from None
    # Classes a sweep file defines (a custom Task) travel to Ray workers by value: the workers cannot
    # import the sweep file as a module.
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    sweep = getattr(module, "sweep", None)
    if sweep is None:
        raise FtrayInputError(f"sweep file {str(path)!r} does not define a module-level `sweep = Sweep(...)`")
    if not isinstance(sweep, Sweep):
        raise FtrayInputError(f"{path}: `sweep` must be a ftray.Sweep, got {type(sweep).__name__}")
    return sweep


def _keyword_hint(error: BaseException, names: dict) -> str:
    """"; did you mean 'prompt'?" for a misspelt keyword given to a class or function the sweep file names
    (TypeError: TextTask.__init__() got an unexpected keyword argument 'promt')."""
    import difflib
    import inspect

    found = re.search(r"(\w+)(?:\.__init__)?\(\) got an unexpected keyword argument '(\w+)'", str(error))
    if not isinstance(error, TypeError) or not found or not callable(names.get(found[1])):
        return ""
    try:
        accepted = list(inspect.signature(names[found[1]]).parameters)
    except (TypeError, ValueError):  # no signature to read (a builtin)
        return ""
    close = difflib.get_close_matches(found[2], accepted, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _line_in(error: BaseException, path: Path, field: bool = False) -> str:
    """", line N": the deepest frame of the traceback that is in the sweep file itself; for ftray's own
    errors (`field`), which start with the field they name, the line of that field's keyword within the
    call the frame points at (`sweep = Sweep(` over many lines)."""
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            line = frame.lineno
    if line is None:
        return ""
    return f", line {field and _keyword_line(path, line, str(error)) or line}"


def _keyword_line(path: Path, line: int, message: str) -> int | None:
    """The line of the keyword argument (`lr=-1.0`) or space key (`"lr": ...`) that the message starts
    with ("lr must be ...", "space['lr'] ...", "asha.grace_steps ..."), in a call that begins on `line`."""
    import ast

    named = re.match(r"space\['(\w+)'\]|(\w+)", message)
    if not named:
        return None
    key, name = named[1], named[2]
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, ValueError, OSError):
        return None
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and call.lineno == line):
            continue
        for kw in call.keywords:
            if name and kw.arg == name:
                return kw.lineno
            if key and kw.arg == "space" and isinstance(kw.value, ast.Dict):
                for k in kw.value.keys:
                    if isinstance(k, ast.Constant) and k.value == key:
                        return k.lineno
    return None
