"""The durable result store (SQLAlchemy): a generation's final record, written once by the worker."""
