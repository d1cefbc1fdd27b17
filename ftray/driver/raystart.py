"""Ray on the driver: a local Ray sized to this machine, or the cluster's; credentials kept out of trials.

Used by a sweep (ftray/driver/tuner.py) and by scoring (ftray/driver/scoring.py). Ray's internals used
here are in ftray/raypatches.py.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ftray import raypatches
from ftray import storage as st


def init_ray(address: str | None, dashboard: bool = True) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Inside `ray job submit` RAY_ADDRESS points at the cluster: join it. Without one, start a
    # local Ray sized to this machine.
    # A local Ray runs its workers at the driver's priority (why: raypatches.workers_not_niced). A
    # cluster's Ray is started by `ray start` and keeps its own setting.
    # The dashboard is on where a trial is a Train run: Ray Train's PlacementGroupCleaner asks its state
    # API whether a trial's controller still lives, and without it a trial stopped by ASHA kept its
    # placement group, so the next trial waited forever. Trials in their Tune trials' processes need
    # none of it (its three processes are a few CPU-seconds per sweep).
    kwargs: dict[str, Any] = {"address": address} if address else {
        **raypatches.workers_not_niced(), "include_dashboard": dashboard}
    if not address:
        raypatches.quiet_token_auth_notice()
    if not sys.stdout.isatty():
        # Ray colours the "(run_trial pid=...)" prefix of every forwarded line; in a log file or a job's
        # logs the colour codes are noise. Ray reads this when it prints.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    ray.init(log_to_driver=True, logging_level="WARNING", **kwargs)
    if address:
        print(f"ftray: joined the Ray cluster at {st.redact(address)}", flush=True)
    else:
        print("ftray: started a local Ray (set RAY_ADDRESS or --address to use a cluster)", flush=True)


# Credentials Tune would copy into every trial actor's runtime_env, and so into a log (why and how:
# raypatches.keep_out_of_runtime_env). They are not needed there: a local Ray's workers inherit the
# environment Ray was started in anyway, and a cluster's nodes need credentials of their own (an IAM
# role, or .ftray/secrets.env: cluster.yaml).
CREDENTIALS_NOT_PROPAGATED = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"}


def keep_credentials_out_of_trials() -> None:
    """Tune no longer copies CREDENTIALS_NOT_PROPAGATED into its trial actors' runtime_env."""
    raypatches.keep_out_of_runtime_env(CREDENTIALS_NOT_PROPAGATED)
