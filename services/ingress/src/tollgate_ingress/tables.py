"""Ingress's only durable state: the outbox of usage events Kafka could not take yet."""

from __future__ import annotations

from sqlalchemy import MetaData
from tollgate_common.db import messaging_tables

__all__ = ["SCHEMA", "metadata", "tables"]

#: The PostgreSQL schema when INGRESS_OUTBOX_DATABASE_URL points at PostgreSQL (one schema per service).
SCHEMA = "ingress"

metadata = MetaData()
tables = messaging_tables(metadata)
