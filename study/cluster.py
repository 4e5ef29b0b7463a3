"""Starting or joining the Ray cluster, and checking it against what the study asks for.

A Ray instance the launcher starts itself runs no dashboard (and so no job server):
Ray's job API once had no authentication at all (CVE-2023-48022). Ray's token
authentication is left as Ray sets it; nothing here turns it off.
"""

from __future__ import annotations

import math
import os
import socket

import ray
import torch

from .config import ConfigError, StudyConfig


def preflight(cfg: StudyConfig) -> None:
    """Checks that need no cluster: GPUs asked for on a machine whose torch sees none."""
    if cfg.num_gpus > 0 and not torch.cuda.is_available() and not cfg.allow_cpu:
        raise ConfigError(
            f"--num-gpus {cfg.num_gpus:g} but torch sees no CUDA device here; "
            "pass --allow-cpu to schedule GPU slots as logical GPUs and run the trials on the CPU"
        )
    if cfg.num_gpus > 0 and not cfg.address and torch.cuda.is_available() and cfg.num_gpus > torch.cuda.device_count():
        raise ConfigError(f"--num-gpus {cfg.num_gpus:g} but this machine has {torch.cuda.device_count()} GPU(s)")


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A quick TCP check of host:port, so a typo costs seconds rather than Ray's long connection retries."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"--address {address}: cannot reach the Ray cluster ({exc.strerror or exc})") from None


TOKEN_HELP = ("export RAY_AUTH_MODE=token, with the cluster's token in ~/.ray/auth_token (copy it from the head "
              "node) or in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, and run again (docs/cluster.md)")


def _check_token(address: str) -> None:
    """One line when the cluster wants a token this process does not send (Ray itself retries for
    twenty seconds, printing a warning a second, then says only that it cannot connect)."""
    if address == "auto" or "://" in address:
        return
    from ray.exceptions import AuthenticationError, RayError

    try:
        ray._raylet.GcsClient(address=address)
    except AuthenticationError:
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        raise ConfigError(f"--address {address}: the Ray cluster wants an authentication token and this process sends "
                          f"none it accepts (RAY_AUTH_MODE is {mode}): {TOKEN_HELP}") from None
    except (RayError, OSError, ValueError):  # not a Ray cluster, or it did not answer: ray.init says so in its words
        return


def connect(cfg: StudyConfig, dashboard: bool = False) -> tuple[dict, bool]:
    """Start a local Ray instance (or join `cfg.address`); returns (the cluster's resources,
    whether this call connected, so that the caller shuts down only what it started)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cfg.address:
        _check_reachable(cfg.address)
        _check_token(cfg.address)
    started = not ray.is_initialized()
    if not started:
        resources = ray.cluster_resources()
    elif cfg.address:
        try:
            ray.init(address=cfg.address, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"--address {cfg.address}: cannot join the Ray cluster ({str(exc).splitlines()[0]})") from None
        resources = ray.cluster_resources()
    else:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            raise ConfigError("RAY_AUTH_MODE=disabled: the launcher does not start Ray without token authentication; "
                              "unset it (Ray then protects the local instance with a token)")
        ray.init(
            num_cpus=cfg.num_cpus or os.cpu_count(),
            num_gpus=cfg.num_gpus,  # with --allow-cpu on a CPU machine these are logical GPUs
            include_dashboard=dashboard,
            logging_level="ERROR",
            log_to_driver=False,
        )
        resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0)
    if cfg.num_gpus > gpus + 1e-9:
        if started:
            ray.shutdown()
        raise ConfigError(f"--num-gpus {cfg.num_gpus:g} but the Ray cluster has {gpus:g} GPU(s)")
    return resources, started


def slots(cfg: StudyConfig, resources: dict) -> int:
    """How many trials can run at once: CPU slots, and GPU slots when trials take GPUs."""
    cpu_slots = math.floor(resources.get("CPU", 1) / cfg.cpus_per_trial + 1e-9)
    if cfg.gpus_per_trial > 0:
        return max(1, min(cpu_slots, math.floor(cfg.num_gpus / cfg.gpus_per_trial + 1e-9)))
    return max(1, cpu_slots)


def trial_resources(cfg: StudyConfig) -> dict:
    res = {"cpu": cfg.cpus_per_trial}
    if cfg.gpus_per_trial > 0:
        res["gpu"] = cfg.gpus_per_trial
    return res
