#!/usr/bin/env bash
# The local Kafka broker for development, tests and demos. The script ships inside the package
# (consumers/broker/kafka.sh, also run by `hiddenstate broker`); see its header for usage.
exec bash "$(dirname -- "${BASH_SOURCE[0]}")/../consumers/broker/kafka.sh" "$@"
