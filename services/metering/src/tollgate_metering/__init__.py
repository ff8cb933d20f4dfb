"""Tollgate metering: price books, rated usage, usage aggregates and the hash-chained event archive.

Consumes ``tollgate.usage.v1`` (``UsageRecorded``), publishes ``tollgate.usage.rated.v1`` (``UsageRated``), answers
``tollgate.metering.v1.MeteringService`` over gRPC. See README.md.
"""

from .app import MeteringApp, serve
from .application import Metering
from .config import Settings
from .domain import DEMO_PRICE_BOOK, PriceBook, apply_markup, parse_price_book, rate
from .rebuild import compare_databases, rebuild

__all__ = [
    "DEMO_PRICE_BOOK",
    "Metering",
    "MeteringApp",
    "PriceBook",
    "Settings",
    "apply_markup",
    "compare_databases",
    "parse_price_book",
    "rate",
    "rebuild",
    "serve",
]
