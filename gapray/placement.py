"""Ray start-up and placement: resources per role checked before any actor starts.

    connect_ray(cfg)                     # a local Ray on this machine, or the cluster's
    check_resources(cfg, ray.cluster_resources())   # clear error naming the role that does not fit
    bundles = place_roles(cfg)           # role -> [(placement group, bundle index)] per actor

`placement=colocate` puts every role's actors into one placement group (PACK: same node where
they fit, so weight sync stays on one object store); `placement=split` gives each role its own
group, so roles can land on different nodes (e.g. generation on inference GPUs, the learner on
training GPUs).
"""

from __future__ import annotations

import os

from gapray.config import Config, resources_per_role


class ResourceError(RuntimeError):
    """The cluster cannot hold what the config asks for."""


def connect_ray(cfg: Config) -> str:
    """Connect to `run.ray_address` (or RAY_ADDRESS, set by `ray job submit`), else start a
    local Ray sized for the roles. Returns "local" or the address."""
    import ray

    if ray.is_initialized():
        return "existing"
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return address
    need = total_request(cfg)
    # Logical CPUs: the loop runs its stages one after another, so the roles can share cores;
    # give Ray at least what the roles ask for even on a 2-core laptop.
    ray.init(
        num_cpus=max(os.cpu_count() or 1, int(need["CPU"] + 0.999)),
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=False,
    )
    return "local"


def total_request(cfg: Config) -> dict[str, float]:
    roles = resources_per_role(cfg)
    return {
        "CPU": sum(r["count"] * r["cpus"] for r in roles.values()),
        "GPU": sum(r["count"] * r["gpus"] for r in roles.values()),
    }


def check_resources(cfg: Config, available: dict[str, float]) -> None:
    """Raise ResourceError, naming each role's request and what the cluster has, if the roles
    cannot all be placed (totals; a per-node fit is Ray's placement group's to decide)."""
    roles = resources_per_role(cfg)
    need = total_request(cfg)
    short = [k for k in ("CPU", "GPU") if need[k] > available.get(k, 0.0) + 1e-9]
    if not short:
        return
    asks = "; ".join(
        f"{name}: {r['count']} x ({r['cpus']:g} CPU, {r['gpus']:g} GPU)" for name, r in roles.items()
    )
    has = ", ".join(f"{available.get(k, 0.0):g} {k}" for k in ("CPU", "GPU"))
    wants = ", ".join(f"{need[k]:g} {k}" for k in ("CPU", "GPU"))
    raise ResourceError(
        f"the roles need {wants} but the cluster has {has} (short of {', '.join(short)}). "
        f"Requests per role: {asks}. Lower generation.num_workers / reward.num_workers / "
        f"learner.num_ranks or their cpus/gpus, or add nodes."
    )


def _bundle(r: dict) -> dict[str, float]:
    b = {"CPU": r["cpus"]}
    if r["gpus"]:
        b["GPU"] = r["gpus"]
    return b


def role_bundles(cfg: Config) -> list[tuple[str, dict[str, float]]]:
    """One (role, Ray bundle) per actor, generation workers first, then reward workers, then
    learner ranks: the order of a colocated group's bundles and of a sweep trial's."""
    return [(name, _bundle(r)) for name, r in resources_per_role(cfg).items() for _ in range(r["count"])]


def place_roles(
    cfg: Config, timeout_s: float = 120.0, within: tuple[object, int] | None = None
) -> dict[str, list[tuple[object, int]]]:
    """Create placement groups and return, per role, one (group, bundle index) per actor.

    within = (group, first): the bundles are already reserved, `role_bundles(cfg)` from bundle
    index `first` of that group on: a `gapray sweep` trial, whose group Ray Tune created from
    the trial's PlacementGroupFactory (gapray.sweep.trial); no group is created then."""
    import ray
    from ray.util.placement_group import placement_group

    roles = resources_per_role(cfg)
    bundle = _bundle
    if within is not None:
        pg, first = within
        placed: dict[str, list[tuple[object, int]]] = {name: [] for name in roles}
        for index, (name, _) in enumerate(role_bundles(cfg)):
            placed[name].append((pg, first + index))
        return placed

    if cfg.run.placement == "colocate":
        order = [(name, i) for name, r in roles.items() for i in range(r["count"])]
        pg = placement_group([bundle(roles[name]) for name, _ in order], strategy="PACK")
        groups = [pg]
        out: dict[str, list[tuple[object, int]]] = {name: [] for name in roles}
        for index, (name, _) in enumerate(order):
            out[name].append((pg, index))
    else:
        out, groups = {}, []
        for name, r in roles.items():
            pg = placement_group([bundle(r)] * r["count"], strategy="PACK")
            groups.append(pg)
            out[name] = [(pg, i) for i in range(r["count"])]
    ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=timeout_s)
    if len(ready) < len(groups):
        raise ResourceError(
            f"placement groups not ready after {timeout_s:.0f}s: the cluster has the resources in total "
            f"but no node fits a role's bundle (placement={cfg.run.placement}); try placement=split"
        )
    return out


def actor_options(place: tuple[object, int], cpus: float, gpus: float) -> dict:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg, index = place
    return {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=index
        ),
    }


def actor_location() -> dict:
    """Where the calling actor runs: Ray node id, node IP, host name and pid (each role's
    ready() reports it, and the run writes them to placement.json)."""
    import socket

    import ray

    inside = ray.is_initialized()  # False for the in-process roles of `gapray bench loop`
    return {
        "node_id": ray.get_runtime_context().get_node_id() if inside else None,
        "node_ip": ray.util.get_node_ip_address() if inside else None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
