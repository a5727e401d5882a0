"""Exception types of the Kafka service and its commands, all under `detector.errors.HiddenstateError`.

As in aiokafka, each type says whether trying again can help (`retriable`): a refused
credential cannot, a broker that is still starting can.
"""

from __future__ import annotations

from detector.errors import HiddenstateError


class ServiceError(HiddenstateError):
    """Base of the service's errors."""

    retriable = False


class BrokerAccessError(ServiceError):
    """The broker refuses this client (TLS trust, client certificate or SASL credentials); retrying cannot help."""


class BrokerScriptError(ServiceError):
    """The local broker script (`hiddenstate broker`, scripts/kafka.sh) failed: Java 17+ and Maven are needed."""


class ProduceError(ServiceError):
    """The broker cannot be reached, or refuses the messages."""

    retriable = True


class BrokerWaitTimeout(ServiceError):
    """A wait on the broker that has no timeout of its own (a transaction step, a new topic's leaders) exceeded
    `broker_wait_seconds`: the step is given up and tried again (consumers/waits.py)."""

    retriable = True


class KafkaDemoError(ServiceError):
    """The demo's broker cannot be reached, or its topics cannot be created."""

    retriable = True


class WeightsCommandError(ServiceError):
    """`hiddenstate weights` cannot do what was asked: no weights topic, no such version, no --out."""


class StopRequested(ServiceError):
    """Raised inside the service when a stop was requested while it waited on the broker; not a failure."""
