"""Generated protobuf and gRPC code for Tollgate's contracts.

Everything below this package is written by `make proto` from `proto/` (the one source of truth) and is neither
committed nor edited by hand.
"""
