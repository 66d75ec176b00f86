"""Everything that speaks jobsd.v1 protobuf: the `JobsApi` interface (base), domain <-> message conversion
(codec), the in-process API (local), the remote one over a gRPC channel (remote) and the gRPC servicers."""
