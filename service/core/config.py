"""Service settings: environment variables with the ``RBN_SERVE_`` prefix, overridable by CLI flags.

Passed to ``create_app(settings)``; never read from a global. Invalid values fail at start-up.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rbn.contract.bundle import MAX_QUEUE_DELAY_MS
from service.core.shipped import default_model_repository

ENV_PREFIX = "RBN_SERVE_"
API_KEY = re.compile(r"[!-+\--~]{8,}")  # one API key: printable ASCII without spaces or commas, 8+ characters


class Settings(BaseSettings):
    """Every knob of the server. Each field is ``RBN_SERVE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", use_attribute_docstrings=True)

    # --- model repository -------------------------------------------------------------------
    model_repository: Path = Field(default_factory=default_model_repository)
    """Folder of model bundles (`<name>/model.json`, `<name>/<version>/model.onnx`); default: ./models if present, else the bundles shipped in the package."""
    primary_model: str | None = None
    """Model used when a request names none; default: the first RBN bundle by name."""

    # --- HTTP -------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    """Interface to bind; use 0.0.0.0 in a container."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as plain text or one JSON object per line."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Minimum level of log lines."""
    access_log: bool = False
    """Log every HTTP request (costs time on the hot path)."""
    listen_backlog: int = Field(2048, ge=1)
    """Connections the kernel queues before the server accepts them (listen(2) backlog)."""
    workers: int = Field(1, ge=1, le=64)
    """Server processes sharing the port, each with its own models, batcher and event loop (every limit is per
    worker); /metrics sums them all. More than 1 lets HTTP work use several cores (BENCHMARKS.md); on a GPU
    every worker holds its own copy of the models in GPU memory."""

    # --- gRPC (Open Inference Protocol v2, service.grpc) -------------------------------------
    grpc_port: int | None = Field(None, ge=0, le=65535)
    """Port of the Open Inference Protocol's gRPC service (inference.GRPCInferenceService, what tritonclient.grpc and
    perf_analyzer speak; Triton and KServe use 8001); unset: no gRPC. Off by default for the bare command (a second
    copy on a fixed port would share it through SO_REUSEPORT rather than fail); the container image sets 8001.
    With --workers every worker serves it (SO_REUSEPORT)."""
    grpc_host: str | None = None
    """Interface the gRPC service binds; default: the same as host."""
    grpc_max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Largest gRPC message received (RESOURCE_EXHAUSTED beyond it, before it is parsed); like max_body_bytes for HTTP."""
    grpc_max_concurrent_rpcs: int = Field(1000, ge=1)
    """gRPC calls handled at once per worker; beyond it RESOURCE_EXHAUSTED at once (like max_connections for HTTP)."""

    # --- ONNX Runtime -----------------------------------------------------------------------
    providers: Literal["auto", "cuda", "cpu"] = "auto"
    """auto: CUDA when available, else CPU; cuda: CUDA or fail at start-up; cpu: CPU only."""
    intra_op_threads: int = Field(0, ge=0)
    """ONNX Runtime threads per inference; 0 picks all CPUs on 1-2, else min(8, CPUs - 1) (one core left to the HTTP loop),
    counting each worker's share of the CPUs (CPUs / workers)."""
    cuda_device: int = Field(0, ge=0)
    """GPU index used by the CUDA provider."""
    cuda_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = "HEURISTIC"
    """cuDNN's convolution algorithm choice. HEURISTIC: cuDNN's own pick, no timing; EXHAUSTIVE (ONNX Runtime's
    default): times every algorithm for every new input shape, so warm-up benchmarks each batch size (seconds per
    shape on a large model) for kernels that may be a little faster; DEFAULT: the first algorithm."""
    cuda_mem_limit_bytes: int = Field(0, ge=0)
    """Limit of each CUDA session's memory arena (0: none). Sessions add up: models (with their baselines) x
    instances x workers, each its own arena, plus cuDNN workspaces and the CUDA context per process."""
    cuda_arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kNextPowerOfTwo"
    """How a CUDA arena grows: kNextPowerOfTwo (ONNX Runtime's default) or kSameAsRequested (no rounding up:
    less memory held when several sessions share one GPU)."""
    cuda_preload_dlls: Literal["auto", "always", "never"] = "auto"
    """onnxruntime.preload_dlls() before the first CUDA session: loads CUDA and cuDNN from pip's nvidia-* wheels,
    which `pip install .[gpu]` outside the image leaves off the library path. auto: unless the image registered
    them with the loader (docker/check_gpu_libs.py --register)."""

    # --- dynamic batching -------------------------------------------------------------------
    max_batch_size: int = Field(32, ge=1)
    """Largest batch, in images, the batcher forms (capped by each bundle's own max_batch_size)."""
    max_queue_delay_ms: float = Field(MAX_QUEUE_DELAY_MS, ge=0)  # also every config.pbtxt's (rbn.contract.bundle)
    """With an inference slot free, how long a batch waits for more requests; an idle runtime runs at once."""
    max_queue_size: int = Field(256, ge=1)
    """Images waiting per model; beyond it requests get 503 with Retry-After at once (must be >= max_batch_size and max_files).
    It is also the most images one request may hold: all its batches must fit in the queue at once."""
    instances: int = Field(1, ge=1, le=16)
    """Batches of one model that may run at the same time (Triton's instance count)."""
    batch_size_search: Literal["auto", "on", "off"] = "auto"
    """At warm-up, time batches of 1, 2, 4, ... max_batch_size images and let the batcher form batches only up to the
    largest size within 10% of the best time per image. On a CPU whether a batch of 224-px images pays depends on
    the machine and what else runs on it (a batch's activations leave the caches; another job slows a long
    multi-threaded run the most); on a GPU the largest usually wins.
    auto: for inputs of at least 96x96 pixels (smaller ones always gain from full batches)."""

    # --- limits -----------------------------------------------------------------------------
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Largest request body (413 beyond it)."""
    max_response_bytes: int = Field(32 * 1024 * 1024, ge=4096)
    """Largest answer one /v2 infer request may ask for (images x requested outputs, at 16 bytes per JSON value and 4 per
    binary one), checked after parsing and before inference: 400 response_too_large beyond it (metric reason
    response_too_large). An output named twice is refused (400) whatever the budget."""
    max_input_magnitude: float = Field(1e6, gt=0.0)
    """Largest absolute value of an FP32 /v2 input (preprocessed values sit within a few units; near float32's 3.4e38
    the model overflows and answers nulls): 400 input_out_of_range beyond it, before inference."""
    max_header_bytes: int = Field(32 * 1024, ge=1024)
    """Bytes of a request's header lines (names and values, after the request line), counted as they arrive:
    431 headers_too_large beyond it and the connection is closed (metric reason headers_too_large)."""
    max_header_count: int = Field(100, ge=8)
    """Header lines of one request at most: 431 headers_too_large beyond it, the connection closed."""
    max_url_bytes: int = Field(8 * 1024, ge=256)
    """Longest request target (path and query), counted as it arrives: 414 url_too_long beyond it, the connection
    closed (metric reason url_too_long)."""
    max_image_pixels: int = Field(4096 * 4096, ge=64)
    """Largest width x height of an uploaded image, checked before decoding (413 beyond it)."""
    max_files: int = Field(16, ge=1)
    """Most images in one multipart request (413 beyond it)."""
    max_form_fields: int = Field(32, ge=1)
    """Most non-file fields in one multipart request (422 beyond it)."""
    max_form_field_bytes: int = Field(64 * 1024, ge=1024)
    """Largest non-file field of a multipart request (422 beyond it)."""
    default_top_k: int = Field(3, ge=1)
    """Labels returned per image when the request does not say."""
    retry_after_s: int = Field(1, ge=0)
    """Value of the Retry-After header on every 503 answer that asks to retry (queue full, still loading)."""

    # --- decoding ---------------------------------------------------------------------------
    inline_decode_pixels: int = Field(256 * 256, ge=0)
    """Images of up to this many pixels (and inline_body_bytes bytes) are decoded on the event loop (cheaper than a thread hop); others in the decode pool."""
    decode_threads: int = Field(0, ge=0)
    """Threads of the decode pool for large images; 0 picks min(4, CPUs)."""
    inline_body_bytes: int = Field(16 * 1024, ge=0)
    """Uploads and uncompressed /v2 bodies of up to this many bytes are opened and parsed on the event loop; larger ones (and every compressed body) in the decode pool."""
    decode_queue_size: int = Field(64, ge=0)
    """Decode jobs waiting for a pool thread at most; beyond it 503 decode_busy with Retry-After, at once."""
    decode_timeout_s: float = Field(10.0, ge=0.0)
    """Longest time one file may take to decode in the pool (from when a worker takes it). The pool's work then runs in
    worker processes (one per pool thread) that are killed and replaced when it passes or decode_cpu_s does (422
    decode_timeout, metric reason decode_timeout) or when the client leaves; 0: decode in the pool's threads, unstoppable."""
    decode_cpu_s: float = Field(2.0, gt=0.0)
    """CPU seconds one file may take to decode in a worker process (with decode_timeout_s > 0): 422 decode_timeout beyond."""
    max_request_pixels: int = Field(4096 * 4096, ge=64)
    """Pixels of all the images of one request together (width x height summed over files), checked before decoding (413 beyond it)."""

    # --- access -----------------------------------------------------------------------------
    api_key: SecretStr | None = None
    """API key(s) every data route requires as `Authorization: Bearer <key>`; several keys (rotation) separated by commas or whitespace. Unset (and no api_key_file): no key is required."""
    api_key_file: Path | None = None
    """File holding the API key(s), one per line (a mounted secret); read once at start-up, added to api_key."""
    metrics_require_key: bool = False
    """/metrics also requires the API key (it is open by default so Prometheus scrapes without one)."""
    docs: bool = True
    """Serve /docs and /openapi.json (open: they describe the API and carry no data); --no-docs turns them off."""

    # --- deadlines and connections ----------------------------------------------------------
    read_timeout_s: float = Field(30.0, gt=0.0)
    """Longest time to receive a request's headers and body, from its first byte (or the connection opening); beyond it 408 and the connection is closed."""
    write_timeout_s: float = Field(30.0, gt=0.0)
    """Longest time an answer may wait for the client to take it once the connection's send buffer is full; beyond it the
    connection is closed and the answer's memory freed (metric reason write_timeout)."""
    keep_alive_timeout_s: float = Field(5.0, gt=0.0)
    """An idle keep-alive connection is closed after this many seconds without a new request."""
    max_connections: int = Field(1000, ge=1)
    """Open HTTP connections at most; a request on a connection beyond it gets 503 (with Retry-After) and the connection is closed."""
    max_queue_wait_s: float = Field(10.0, gt=0.0)
    """Longest time a request's images wait in the batch queue; beyond it 503 queue_timeout with Retry-After."""
    unready_after_failures: int = Field(5, ge=1)
    """Consecutive failed inference batches after which readiness turns false (the next success turns it back)."""

    # --- shadow traffic and shutdown --------------------------------------------------------
    shadow_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Fraction of /predict requests whose images also run on the model's baseline, off the request path."""
    shadow_max_pending: int = Field(1024, ge=1)
    """Shadow runs waiting or running at most; beyond it they are dropped (counted as backlog)."""
    drain_delay_s: float = Field(5.0, ge=0.0)
    """After SIGTERM: seconds to keep serving with readiness false before closing the listener, so a load
    balancer that polls /readyz marks the replica down first (longer than its check interval times its fall
    count). Ctrl-C (SIGINT) skips it: a person at a terminal has no balancer to wait for."""
    graceful_timeout_s: float = Field(30.0, gt=0.0)
    """After the listener closes: the longest wait for in-flight requests to finish."""

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"model repository {str(value)!r} is not a directory")
        return value

    @field_validator("api_key")
    @classmethod
    def _keys_well_formed(cls, value: SecretStr | None) -> SecretStr | None:
        """Checked here, so a bad key is an invalid setting (exit 2) like any other; the key file is read at start-up."""
        if value is None:
            return None
        keys = [k for k in re.split(r"[\s,]+", value.get_secret_value().strip()) if k]
        if not keys:
            raise ValueError("is empty (leave it unset to require no key)")
        for key in keys:  # never quote the key: this message is printed
            if not API_KEY.fullmatch(key):
                raise ValueError(f"a key of {len(key)} characters is not 8+ printable ASCII characters without spaces or commas")
        return value

    @field_validator("api_key_file")
    @classmethod
    def _key_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"API key file {str(value)!r} is not a readable file")
        return value

    @field_validator("primary_model")
    @classmethod
    def _primary_name(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> Settings:
        if self.max_queue_size < self.max_batch_size:
            raise ValueError(f"max_queue_size ({self.max_queue_size}) must be >= max_batch_size ({self.max_batch_size})")
        if self.max_queue_size < self.max_files:
            raise ValueError(f"max_queue_size ({self.max_queue_size}) must be >= max_files ({self.max_files}): "
                             "a request of max_files images must fit in the queue")
        return self
