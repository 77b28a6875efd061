"""The Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``), beside the HTTP front end
on the same core: the stubs (generated from ``grpc_service.proto``, committed), the codec, the one error
mapping, the servicer and the server (health checking included)."""
