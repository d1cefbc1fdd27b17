"""Built-in tasks: ViGGO, a synthetic task of the same shape, and your own CSV/JSONL/HF data."""

from ftray.tasks.base import Example, Task
from ftray.tasks.synthetic import SyntheticTask
from ftray.tasks.text import TextTask
from ftray.tasks.viggo import ViggoTask

__all__ = ["Example", "SyntheticTask", "Task", "TextTask", "ViggoTask"]
