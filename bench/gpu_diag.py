"""Where does a GPU step lose time under Ray? The bench's bare step (bench/gpu.py), 0.5B-sized model, run
in this process (default torch threads, then one), in a Ray actor, and in a thread of a Ray actor (as
Ray Train runs the loop). One run each, median step seconds after 10 warm-up steps.

    python bench/gpu_diag.py --data VIGGO_FOLDER
"""

import argparse
import os
import sys
import tempfile
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench.gpu as g  # noqa: E402
from ftray.tasks import ViggoTask  # noqa: E402

CFG = dict(rank=16, lr=1e-4, steps=40, batch=32, max_length=256)


def setup(data_dir):
    return g.task_data(ViggoTask(path=data_dir), CFG["max_length"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--size", default="0.5b")
    args = ap.parse_args()
    import ray

    dev = torch.device("cuda")
    folder = Path(tempfile.mkdtemp()) / "model"
    tok, data = setup(args.data)
    g.make_model(folder, g.SHAPES[args.size], tok, dev)
    res = {"inproc": g.bare(folder, data, tok, CFG, dev)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    res["inproc_1thread"] = g.bare(folder, data, tok, CFG, dev)
    torch.set_num_threads(threads)
    ray.init(num_cpus=8, num_gpus=1, include_dashboard=False, logging_level="ERROR")

    @ray.remote(num_gpus=1, num_cpus=1)
    class Runner:
        def run(self, threaded: bool):
            t, d = setup(args.data)
            if not threaded:
                return g.bare(folder, d, t, CFG, dev)
            out = {}
            th = threading.Thread(target=lambda: out.update(g.bare(folder, d, t, CFG, dev)))
            th.start()
            th.join()
            return out

    runner = Runner.options(runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}}).remote()
    res["ray_actor"] = ray.get(runner.run.remote(False))
    res["ray_actor_thread"] = ray.get(runner.run.remote(True))
    for k, v in res.items():
        print(f"DIAG {k:18} step_s {v['step_s'] * 1000:7.1f} ms  tok/s {v['tokens_per_s']:8.0f}")


if __name__ == "__main__":
    main()
