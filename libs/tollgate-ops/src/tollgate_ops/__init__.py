"""Tollgate operators' command line (``tollgate``): replay, reconcile, rerate, audit, status."""
