"""The Kafka service around the engine (see `hiddenstate serve`, coming with the Kafka issue)."""
