"""The RabbitMQ transport (``amqp://``, ``amqps://``), on pika."""

from zocalo.transport.rabbitmq.transport import RabbitMQTransport

__all__ = ["RabbitMQTransport"]
