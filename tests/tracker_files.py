"""Read back what the trackers wrote, with no tracker server: TensorBoard event files (TFRecord
framing + tensorboardX's Event protobuf), a W&B offline run's .wandb file (W&B's LevelDB-style
record log + wandb's Record protobuf) and an MLflow file store (MlflowClient).

Not a test module: tests/test_trackers.py and tests/test_sweep.py import it.

    tensorboard_scalars(run / "tensorboard")   # {tag: {step: value}}
    wandb_history(run / "wandb")               # {key: {step: value}}
    mlflow_metrics(run / "mlruns")             # {run name: {key: {step: value}}}
"""

from __future__ import annotations

import json
import struct
from pathlib import Path


def tensorboard_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """Every scalar under `logdir` as TensorBoard shows it: event files in the order they were
    written (first event's wall time), and a SessionLog START at step T (a writer's purge_step)
    hides every earlier event at a step >= T."""
    from tensorboardX.proto import event_pb2

    files = sorted(Path(logdir).rglob("events.out.tfevents.*"))
    assert files, f"no event files under {logdir}"
    per_file = []
    for path in files:
        data = path.read_bytes()
        pos, events = 0, []
        while pos < len(data):
            # TFRecord: uint64 length, uint32 crc(length), payload, uint32 crc(payload)
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            payload = data[pos + 12 : pos + 12 + length]
            pos += 12 + length + 4
            event = event_pb2.Event()
            event.ParseFromString(payload)
            events.append(event)
        per_file.append(events)
    per_file.sort(key=lambda events: events[0].wall_time if events else 0.0)
    out: dict[str, dict[int, float]] = {}
    for events in per_file:
        for event in events:
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                for steps in out.values():
                    for s in [s for s in steps if s >= event.step]:
                        del steps[s]
            for v in event.summary.value:
                out.setdefault(v.tag, {})[int(event.step)] = float(v.simple_value)
    return out


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a .wandb file: a 7-byte header (':W&B', magic 0xBEE1, version), then
    32 KiB blocks of chunks, each with a 7-byte header (crc32, uint16 length, type: 1 full,
    2 first, 3 middle, 4 last); a block's tail shorter than a header is padding."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B record log"
    block, pos, records, parts = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            parts = chunk
        elif kind == 3:
            parts += chunk
        elif kind == 4:
            records.append(parts + chunk)
    return records


def wandb_history(wandb_dir: Path) -> dict[str, dict[int, float]]:
    """{key: {step: value}} from the history records of every offline run under `wandb_dir`."""
    from wandb.proto import wandb_internal_pb2

    runs = sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))
    assert runs, f"no offline W&B run under {wandb_dir}"
    out: dict[str, dict[int, float]] = {}
    for path in runs:
        for raw in _wandb_records(path):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(raw)
            if rec.WhichOneof("record_type") != "history":
                continue
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            step = int(items.get("_step", rec.history.step.num))
            for k, v in items.items():
                if not k.startswith("_") and isinstance(v, int | float):
                    out.setdefault(k, {})[step] = float(v)
    return out


def mlflow_metrics(store: Path) -> dict[str, dict[str, dict[int, float]]]:
    """{run name: {key: {step: value}}} of every run in the file store `store` (runs of one
    name merged)."""
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=Path(store).resolve().as_uri())
    out: dict[str, dict[str, dict[int, float]]] = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            # A trial interrupted and resumed in a sweep has two MLflow runs of one name (Tune's
            # callback opens one per driver): their metrics together are the trial's.
            merged = out.setdefault(run.info.run_name, {})
            for key in run.data.metrics:
                hist = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
                merged.setdefault(key, {}).update(hist)
    return out
