"""Tollgate's router: picks the provider for a public model name, speaks its wire format, and answers in
OpenAI format with the exact usage the provider reported (``tollgate.router.v1.RouterService``).
"""
