"""Coverage-guided fuzzing (atheris/libFuzzer) of the service's scoring path: decode -> engine -> outputs.

The longer-running companion of tests/test_hostile_input.py (hypothesis, in CI). Each input is cut
into up to 8 Kafka messages (optional key, value bytes) and goes through one long-lived
`ScoringService`'s decoder, engine and output builder, as one poll would. A crash is anything that
escapes, a reading that is neither scored nor dead-lettered, or an output the producer could not send.

    .venv/bin/pip install -e ".[fuzz]"
    .venv/bin/python scripts/fuzz_decode.py -max_total_time=300 -dict=scripts/fuzz_decode.dict   # libFuzzer flags
    .venv/bin/python scripts/fuzz_decode.py -max_total_time=300 -dict=scripts/fuzz_decode.dict /tmp/corpus  # keep a corpus

Not part of the test suite (it runs until stopped or -max_total_time).
"""

from __future__ import annotations

import asyncio
import sys

import atheris

with atheris.instrument_imports(include=["consumers", "detector.readings.coerce"]):
    from aiokafka.structs import ConsumerRecord

    from consumers.config import ServiceConfig
    from consumers.service import ScoringService
    from detector.config import DetectorConfig
    from detector.model.store import untrained

SERVICE = ScoringService(
    ServiceConfig(max_message_bytes=4096, max_key_bytes=64, max_channels=4, checkpoints_enabled=False,
                  metrics_enabled=False, detector=DetectorConfig(capacity=64, initial_capacity=8, warmup=2)),
    untrained(8, 1, seed=7),
)
LOOP = asyncio.new_event_loop()
OFFSET = [0]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    records = []
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        key = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80)) if fdp.ConsumeBool() else None
        value = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 600)) if fdp.ConsumeIntInRange(0, 15) else None
        records.append(ConsumerRecord("in", 0, OFFSET[0], 0, 0, key, value, None, 0, 0, []))
        OFFSET[0] += 1
    stats = SERVICE.stats
    before = stats.scored + sum(stats.dead_lettered.values())
    decoded = SERVICE.decoder.decode([(r.key, r.value) for r in records])
    result = LOOP.run_until_complete(SERVICE._score(decoded))
    outputs = SERVICE._outputs(records, decoded, result)
    after = stats.scored + sum(stats.dead_lettered.values())
    if after - before != len(decoded):
        raise AssertionError(f"{len(decoded)} readings but {after - before} scored or dead-lettered")
    for out in outputs:
        if not (out.key is None or isinstance(out.key, bytes)) or not (out.value is None or isinstance(out.value, bytes)):
            raise AssertionError(f"an output the producer cannot send: {out!r}")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
