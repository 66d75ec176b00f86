"""The gRPC edge: servicers that decode metadata, call the in-process API and map errors once."""
