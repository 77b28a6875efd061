"""The protocol-neutral core: models, batcher, runtime, imaging, data plane, errors, settings and metrics. Imports no web framework."""
