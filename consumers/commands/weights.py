"""`hiddenstate weights`: what a consumer group's learnt weights are, roll them back, export one as a model.

    hiddenstate weights list   --bootstrap 127.0.0.1:9092 --group hiddenstate
    hiddenstate weights reset  --bootstrap 127.0.0.1:9092 --group hiddenstate --model gru-default
    hiddenstate weights export --bootstrap 127.0.0.1:9092 --group hiddenstate --out models/plant-7

The group's versions live on its weights topic (`learning = "online"` or `fit_first`, docs/models.md).

- `list`: every version of the group still on the topic (compaction keeps at least the newest), oldest
  first, and whether it fits `--model`; the running instances score with the newest that fits.
- `reset`: roll back to the loaded model's own weights without a restart: writes them as the next version,
  which every instance adopts at its next batch boundary (the learner goes on learning from them; set
  `learning = "off"` to stop it too).
- `export`: writes the newest version (or `--version N`) as a model directory, to review it and ship it as
  `model = DIR`. A group that then loads it refuses the old topic's versions (another base model) and learns
  from the exported weights.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from consumers.clients import quietly_stop
from consumers.config import ServiceConfig, load_service_config
from consumers.errors import WeightsCommandError
from consumers.logs import error_text
from consumers.weights import RECORD_BYTES, read_group
from detector.config import load_config
from detector.errors import ModelError
from detector.model.store import Model, load_model, save_model
from detector.model.versions import WeightsVersion


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "reset", "export"], help="what to do (see above)")
    parser.add_argument("--config", metavar="FILE", help="TOML file with [service] and [detector] tables, as `serve`")
    parser.add_argument("--model", help="the model the group loads (default: the config's, else gru-default)")
    parser.add_argument("--bootstrap", metavar="HOST:PORT[,...]", help="bootstrap servers (default 127.0.0.1:9092)")
    parser.add_argument("--group", metavar="ID", help="the consumer group (default hiddenstate)")
    parser.add_argument("--weights-topic", metavar="TOPIC", help="the group's weights topic (default <group>.weights)")
    parser.add_argument("--version", type=int, metavar="N", help="export: this version (default the newest)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="export: the model directory to write")


def run(args: argparse.Namespace) -> int:
    config = load_service_config(args.config, detector=load_config(args.config, model=args.model),
                                 bootstrap_servers=args.bootstrap, group_id=args.group, weights_topic=args.weights_topic)
    if args.action == "export" and args.out is None:
        raise WeightsCommandError("weights export needs --out DIR: the model directory to write")
    model = load_model(config.detector.model)
    try:
        versions = asyncio.run(_read(config))
        reset = asyncio.run(_reset(config, model, versions)) if args.action == "reset" else None
    except KafkaError as exc:
        raise WeightsCommandError(f"Kafka at {config.bootstrap_servers}: {error_text(exc)}: check --bootstrap and "
                                  "that the broker is up") from None
    if args.action == "list":
        _list(versions, model, config)
    elif reset is not None:
        print(f"wrote version {reset.version} = the weights of {model.model_id} to {config.weights_name}: the group "
              "scores with them from each instance's next batch")
    else:
        path = _export(versions, model, args.version, args.out)
        print(f"wrote {path}: load it with model = \"{path}\"")
    return 0


async def _read(config: ServiceConfig) -> list[WeightsVersion | ModelError]:
    consumer = AIOKafkaConsumer(**config.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=RECORD_BYTES,
                                fetch_max_bytes=RECORD_BYTES)
    try:
        await consumer.start()
        topic = TopicPartition(config.weights_name, 0)
        if topic.topic not in await consumer.topics():
            raise WeightsCommandError(f"no weights topic {topic.topic}: group {config.group_id} has learnt nothing "
                                      "(or set --weights-topic / --group)")
        records = await read_group(consumer, topic, config.group_id.encode())
    finally:
        await quietly_stop(consumer)
    out: list[WeightsVersion | ModelError] = []
    for raw in records:
        try:
            out.append(WeightsVersion.from_bytes(raw))
        except ModelError as exc:
            out.append(exc)
    return out


def _fits(weights: WeightsVersion, model: Model) -> str:
    try:
        weights.check(model.network, model.meta.get("sha256", ""), weights.channels)
    except ModelError as exc:
        return f"no: {exc}"
    return "yes"


def _list(versions: list[WeightsVersion | ModelError], model: Model, config: ServiceConfig) -> None:
    print(f"{config.weights_name} (group {config.group_id}, against {model.model_id}), oldest first:")
    if not versions:
        print("  no versions: the group scores with the loaded weights")
    for v in versions:
        if isinstance(v, ModelError):
            print(f"  unreadable record: {v}")
            continue
        made = datetime.fromtimestamp(v.created_at, timezone.utc).isoformat(timespec="seconds")
        print(f"  version {v.version:>6}  {made}  ({time.time() - v.created_at:,.0f} s ago)  by {v.writer or '?'}  "
              f"{v.channels} channel(s)  fits: {_fits(v, model)}")


async def _reset(config: ServiceConfig, model: Model, versions: list[WeightsVersion | ModelError]) -> WeightsVersion:
    readable = [v for v in versions if isinstance(v, WeightsVersion)]
    if not readable:
        raise WeightsCommandError(f"{config.weights_name} holds no version of group {config.group_id}: it scores with "
                                  "the loaded weights already")
    newest = readable[-1]
    reset = WeightsVersion.of(model.network, max(v.version for v in readable) + 1, model.meta.get("sha256", ""),
                              newest.channels, "reset-" + uuid.uuid4().hex[:8])
    producer = AIOKafkaProducer(**config.kafka_client_kwargs(), acks="all", max_request_size=RECORD_BYTES)
    try:
        await producer.start()
        await producer.send_and_wait(config.weights_name, reset.to_bytes(), key=config.group_id.encode(), partition=0)
    finally:
        await quietly_stop(producer)
    return reset


def _export(versions: list[WeightsVersion | ModelError], model: Model, version: int | None, out: Path) -> Path:
    readable = [v for v in versions if isinstance(v, WeightsVersion) and (version is None or v.version == version)]
    if not readable:
        raise WeightsCommandError(f"no version {version if version is not None else ''} on the weights topic to export"
                                  " (see `hiddenstate weights list`)")
    weights = readable[-1]
    weights.check(model.network, model.meta.get("sha256", ""), weights.channels)
    model.network.load_state_dict(weights.tensors)
    learnt = {"version": weights.version, "base_sha256": weights.base, "writer": weights.writer,
              "created_at": weights.created_at, "channels": weights.channels}
    exported = Model(name=f"{model.name}-v{weights.version}", network=model.network,
                     meta={**{k: v for k, v in model.meta.items() if k != "sha256"}, "learnt_online": learnt})
    card = (f"# {exported.name}\n\nWeights version {weights.version} learnt online by {weights.writer or '?'} from "
            f"model {model.model_id} ({weights.channels} channel(s)), exported by `hiddenstate weights export`.\n\n"
            f"What the base model was trained on, and its limits, are in its own card.\n")
    return save_model(exported, out, card)
