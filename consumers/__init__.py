"""The Kafka service around the engine (`hiddenstate serve`): config, decoding, the scoring service; see docs/service.md."""
