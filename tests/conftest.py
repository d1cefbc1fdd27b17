import os

import pytest

# No hub on the project's machines: make any accidental download fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from ftray.models import build_tokenizer
    from ftray.tasks import SyntheticTask

    task = SyntheticTask(n_train=300, n_valid=20, n_test=20)
    return build_tokenizer(t for e in task.examples("train") for t in (e.prompt, e.completion))
