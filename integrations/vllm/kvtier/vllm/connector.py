"""KVTierConnector: vLLM's V1 KV connector over kvtier.

vLLM runs one instance in the scheduler (role SCHEDULER) and one in every
worker (role WORKER):

* Scheduler: ``get_num_new_matched_tokens`` hashes the request into chunk
  keys (from vLLM's block hashes, or from token ids) and asks the cache how
  many leading chunks it holds, in the namespace of every tensor-parallel
  rank; the answer is whole chunks only, and never the whole prompt (the last
  prompt token is always recomputed). ``update_state_after_alloc`` plans the
  load; ``build_connector_meta`` turns plans into per-step metadata: which
  chunks to load into which blocks, and which newly completed chunks to save.
* Worker: ``register_kv_caches`` describes vLLM's paged KV tensors to kvtier
  (FlashAttention layout [2, num_blocks, block_size, num_kv_heads,
  head_size] per layer, on the CPU or a CUDA device). ``start_load_kv``
  loads the planned chunks from the cache into host buffers and scatters
  them into the blocks, all layers at once or, with ``layerwise_load``, one
  layer per ``wait_for_layer_load``. ``save_kv_layer`` gathers each layer of
  the chunks to save; ``wait_for_save`` stores them.

A chunk that cannot be loaded (evicted since the lookup, damaged, daemon
unreachable) is never scattered: its blocks, and those of every later chunk
of the request, are reported by ``get_block_ids_with_load_errors`` so vLLM
recomputes them.

Loads and saves complete within the step, so ``get_finished`` reports
nothing and ``request_finished`` never delays freeing blocks.

The module imports without vLLM: it then defines stand-ins with the shape
of vLLM's base classes, so tests can drive the connector directly.

Thread-safety: vLLM calls a connector from one thread; instances are not
meant to be shared between threads. The embedded caches of this process are
shared between connectors under a lock.
"""

import dataclasses
import enum
import logging
import os
import threading

import kvtier

logger = logging.getLogger("kvtier.vllm")

try:  # pragma: no cover - depends on the environment
    from vllm.distributed.kv_transfer.kv_connector.v1.base import (
        KVConnectorBase_V1,
        KVConnectorMetadata,
        KVConnectorRole,
    )

    HAVE_VLLM = True
except ImportError:
    HAVE_VLLM = False

    class KVConnectorRole(enum.Enum):
        """Stand-in for vLLM's KVConnectorRole."""

        SCHEDULER = 0
        WORKER = 1

    class KVConnectorMetadata:
        """Stand-in for vLLM's KVConnectorMetadata."""

    class KVConnectorBase_V1:  # noqa: N801 - vLLM's name
        """Stand-in for the parts of vLLM's KVConnectorBase_V1 this uses."""

        def __init__(self, vllm_config, role, kv_cache_config=None):
            self._connector_metadata = None
            self._vllm_config = vllm_config
            if getattr(vllm_config, "kv_transfer_config", None) is None:
                raise ValueError("kv_transfer_config must be set for KVConnectorBase_V1")
            self._kv_transfer_config = vllm_config.kv_transfer_config
            self._kv_cache_config = kv_cache_config
            self._role = role

        @property
        def role(self):
            return self._role

        def bind_connector_metadata(self, connector_metadata):
            self._connector_metadata = connector_metadata

        def clear_connector_metadata(self):
            self._connector_metadata = None

        def _get_connector_metadata(self):
            assert self._connector_metadata is not None
            return self._connector_metadata

        def has_connector_metadata(self):
            return self._connector_metadata is not None


# ---- configuration ---------------------------------------------------------------

_MODES = ("embedded", "daemon")
_SAVE_POLICIES = ("prompt", "all", "none")
_KEY_SOURCES = ("block_hashes", "token_ids")


@dataclasses.dataclass
class KVTierConfig:
    """The connector's settings: kv_connector_extra_config keys of the same
    names (docs/vllm.md). Defaults come from vLLM's own configuration."""

    mode: str = "embedded"  # "embedded" (in this process) or "daemon" (kvtierd)
    socket_path: str = "/run/kvtier/kvtierd.sock"  # daemon: kvtierd's Unix socket
    address: str = ""  # daemon: "host:port" instead of the socket
    token: str = ""  # daemon: bearer token (default: $KVTIER_TOKEN)
    token_file: str = ""  # daemon: file holding it, read again while running ($KVTIER_TOKEN_FILE)
    shared_memory: bool = True  # daemon: move bytes through the mapped arena
    embedded_name: str = "default"  # embedded: connectors naming one name share a cache
    dram_capacity_bytes: int = 4 << 30  # embedded: host DRAM for chunks, bytes
    tokens_per_chunk: int = 256  # tokens per stored chunk; a multiple of block_size
    save_policy: str = "prompt"  # "prompt", "all" (also generated tokens), "none"
    key_source: str = "block_hashes"  # "block_hashes" (vLLM's) or "token_ids"
    layerwise_load: bool = False  # scatter one layer per wait_for_layer_load
    cache_salt: str = ""  # tenant secret for every request (joined with the request's)
    model: str = ""  # model id in the namespace (default: vLLM's model)
    model_revision: str = ""  # model revision in the namespace (default: vLLM's)
    dtype: str = ""  # KV dtype (default: the KV cache spec's); must match the tensors
    tp_rank: int = -1  # tensor-parallel rank (default: vLLM's)
    tp_size: int = 0  # tensor-parallel size (default: vLLM's)
    device: str = "auto"  # data path: "auto" (the tensors' device), "cpu", "cuda"

    @classmethod
    def from_extra(cls, extra):
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in dict(extra or {}).items():
            if key not in known:
                raise ValueError(
                    f"kv_connector_extra_config.{key}: unknown key (known: {', '.join(known)})"
                )
            default = known[key].default
            try:
                if isinstance(default, bool):
                    if isinstance(value, str):
                        if value.lower() not in ("true", "false", "1", "0"):
                            raise ValueError(value)
                        value = value.lower() in ("true", "1")
                    else:
                        value = bool(value)
                elif isinstance(default, int):
                    value = int(value)
                else:
                    value = str(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"kv_connector_extra_config.{key}: {value!r} is not a {type(default).__name__}"
                ) from None
            values[key] = value
        config = cls(**values)
        config.validate()
        return config

    def validate(self):
        def bad(field, message):
            raise ValueError(f"kv_connector_extra_config.{field}: {message}")

        if self.mode not in _MODES:
            bad("mode", f"{self.mode!r} is not one of {_MODES}")
        if self.save_policy not in _SAVE_POLICIES:
            bad("save_policy", f"{self.save_policy!r} is not one of {_SAVE_POLICIES}")
        if self.key_source not in _KEY_SOURCES:
            bad("key_source", f"{self.key_source!r} is not one of {_KEY_SOURCES}")
        if self.device not in ("auto", "cpu", "cuda"):
            bad("device", f"{self.device!r} is not one of auto, cpu, cuda")
        if self.tokens_per_chunk <= 0:
            bad("tokens_per_chunk", "must be positive")
        if self.dram_capacity_bytes <= 0:
            bad("dram_capacity_bytes", "must be positive")
        if self.mode == "daemon" and not (self.socket_path or self.address):
            bad("socket_path", "daemon mode needs socket_path or address")


# ---- metadata sent from the scheduler to the workers -----------------------------


@dataclasses.dataclass
class ChunkLoad:
    """Load one chunk: its key, the blocks of all its tokens, and how many of
    its leading tokens the engine already holds (skipped; a block multiple)."""

    chunk: "kvtier.ChunkRef"
    block_ids: list
    skip_tokens: int


@dataclasses.dataclass
class RequestLoad:
    req_id: str
    salt: object  # _salt(): the cache salt, or (cache salt, LoRA adapter)
    chunks: list  # ChunkLoad, in chain order


@dataclasses.dataclass
class ChunkSave:
    req_id: str
    salt: object  # _salt(): the cache salt, or (cache salt, LoRA adapter)
    chunk: "kvtier.ChunkRef"
    block_ids: list


@dataclasses.dataclass
class KVTierConnectorMetadata(KVConnectorMetadata):
    loads: list = dataclasses.field(default_factory=list)  # RequestLoad
    saves: list = dataclasses.field(default_factory=list)  # ChunkSave


# ---- process-wide embedded caches ----------------------------------------------------

_embedded_lock = threading.Lock()
_embedded_caches = {}


def _embedded_cache(name, capacity_bytes):
    """The embedded cache `name` of this process (the scheduler and the worker
    of a single-process vLLM share it)."""
    with _embedded_lock:
        cache = _embedded_caches.get(name)
        if cache is None:
            options = kvtier.CacheOptions()
            options.dram_capacity_bytes = capacity_bytes
            if capacity_bytes < options.slab_bytes:
                options.slab_bytes = 2 << 20  # the smallest slab
            config = kvtier.CacheConfig()
            config.mode = "embedded"
            config.embedded = options
            cache = kvtier.open_cache(config)
            _embedded_caches[name] = cache
        return cache


def _open_cache(config):
    if config.mode == "embedded":
        return _embedded_cache(config.embedded_name, config.dram_capacity_bytes)
    client = kvtier.ClientOptions()
    if config.address:
        client.address = config.address
    else:
        client.socket_path = config.socket_path
    # The configuration before the environment; each names one source.
    if config.token and config.token_file:
        raise ValueError("kvtier: set token or token_file, not both")
    if not config.token and not config.token_file:
        env_token = os.environ.get("KVTIER_TOKEN", "")
        env_file = os.environ.get("KVTIER_TOKEN_FILE", "")
        if env_token and env_file:
            raise ValueError("kvtier: set $KVTIER_TOKEN or $KVTIER_TOKEN_FILE, not both")
        config = dataclasses.replace(config, token=env_token, token_file=env_file)
    if config.token:
        client.token = config.token
    elif config.token_file:
        # Read again every 10 s: a token replaced in a mounted Secret takes
        # effect in this engine without a restart.
        client.token_file = config.token_file
    client.shared_memory = config.shared_memory
    cache_config = kvtier.CacheConfig()
    cache_config.mode = "daemon"
    cache_config.daemon = client
    return kvtier.open_cache(cache_config)


def _hash_bytes(h):
    """vLLM block hashes are bytes; older versions used ints or tuples with a
    hash_value."""
    if isinstance(h, (bytes, bytearray)):
        return bytes(h)
    value = getattr(h, "hash_value", h)
    if isinstance(value, int):
        return value.to_bytes((value.bit_length() + 8) // 8 or 1, "little", signed=True)
    return repr(value).encode()


@dataclasses.dataclass
class _LayoutSpec:
    num_layers: int
    num_kv_heads: int
    head_size: int
    block_size: int
    dtype: "kvtier.DType"


@dataclasses.dataclass
class _Lookup:
    num_computed_tokens: int  # what the engine had locally when asked
    chunks: list  # ChunkRef of the request's usable prefix
    matched: int  # leading chunks cached in every rank's namespace


@dataclasses.dataclass
class _RequestState:
    request: object
    salt: object  # _salt(): the cache salt, or (cache salt, LoRA adapter)
    block_ids: list = dataclasses.field(default_factory=list)
    cacheable: bool = True  # False: never looked up or saved (see _cacheable)
    saved_chunks: int = 0  # leading chunks known to be stored
    load_start: int = 0  # tokens [load_start, load_end) come from the cache
    load_end: int = 0
    load_chunks: list = dataclasses.field(default_factory=list)  # ChunkRef of the lookup


class KVTierConnector(KVConnectorBase_V1):
    """vLLM V1 KV connector that saves KV into kvtier and reuses it."""

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config):
        """vLLM asks this before it captures CUDA graphs. A layer-by-layer
        load scatters in wait_for_layer_load, which a full-graph replay never
        calls, so with layerwise_load the attention layers must run outside
        the graphs. Saves need nothing: wait_for_save gathers every layer
        that save_kv_layer did not."""
        return KVTierConfig.from_extra(extra_config).layerwise_load

    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config, role, kv_cache_config)
        extra = getattr(self._kv_transfer_config, "kv_connector_extra_config", None) or {}
        self.config = KVTierConfig.from_extra(extra)
        model_config = getattr(vllm_config, "model_config", None)
        parallel_config = getattr(vllm_config, "parallel_config", None)
        if not self.config.model:
            self.config.model = str(getattr(model_config, "model", "") or "")
        if not self.config.model:
            raise ValueError("kv_connector_extra_config.model: no model id (vLLM gave none)")
        if not self.config.model_revision:
            self.config.model_revision = str(getattr(model_config, "revision", "") or "")
        if self.config.tp_size <= 0:
            self.config.tp_size = int(getattr(parallel_config, "tensor_parallel_size", 1) or 1)
        if self.config.tp_rank < 0:
            self.config.tp_rank = self._vllm_tp_rank() if role == KVConnectorRole.WORKER else 0
        if not 0 <= self.config.tp_rank < self.config.tp_size:
            raise ValueError(
                f"kv_connector_extra_config.tp_rank: {self.config.tp_rank} is not below "
                f"tp_size {self.config.tp_size}"
            )
        self._layout = self._layout_from_config(vllm_config, kv_cache_config)
        if self._layout is not None and self.config.tokens_per_chunk % self._layout.block_size:
            raise ValueError(
                f"kv_connector_extra_config.tokens_per_chunk: {self.config.tokens_per_chunk} is "
                f"not a multiple of the block size {self._layout.block_size}"
            )
        self._cache = _open_cache(self.config)
        if (
            self.config.mode == "daemon"
            and self.config.key_source == "block_hashes"
            and role == KVConnectorRole.SCHEDULER
            and os.environ.get("PYTHONHASHSEED") is None
        ):
            # vLLM seeds its block-hash chain from PYTHONHASHSEED, or from
            # random bytes when it is unset: keys would then differ in every
            # process, and no other instance (nor this one after a restart)
            # would ever hit what this one saves.
            logger.warning(
                "kvtier: PYTHONHASHSEED is not set, so vLLM's block hashes are random per "
                "process and kvtierd's cache is not shared between vLLM instances or "
                "restarts; set PYTHONHASHSEED to the same value for every instance, "
                "or use key_source=token_ids"
            )
        self._namespaces = {}  # (salt, tp_rank) -> Namespace
        self.counters = {
            "lookups": 0,  # get_num_new_matched_tokens calls that asked the cache
            "lookup_errors": 0,  # lookups that failed (counted as misses)
            "matched_tokens": 0,  # tokens offered to vLLM from the cache
            "loaded_chunks": 0,  # chunks scattered into vLLM's blocks
            "loaded_tokens": 0,  # tokens written into vLLM's blocks
            "load_errors": 0,  # chunks that failed to load (their blocks reported)
            "saved_chunks": 0,  # chunks stored
            "save_errors": 0,  # chunks not stored (no room, daemon down, load failed, ...)
            "uncacheable_requests": 0,  # token-id keys cannot name their KV (multimodal, embeds)
        }
        # Scheduler side.
        self._lookups = {}
        self._requests = {}
        # Worker side.
        self._layer_names = []
        self._layer_index = {}
        self._runtime = None
        self._copier = None
        self._free_buffers = []
        self._pending_loads = []  # (transfers, buffers) scattered layer by layer
        self._layers_loaded = set()
        self._pending_saves = []  # (ChunkSave, Namespace, buffer, transfer)
        self._layers_saved = set()
        self._load_error_blocks = set()
        # Requests whose load failed, here or (with tensor parallelism) on
        # another rank: what they computed over it is wrong, so nothing more
        # of theirs is saved. Forgotten when they finish.
        self._load_failed_reqs = set()

    # ---- helpers ------------------------------------------------------------------

    @staticmethod
    def _vllm_tp_rank():
        try:
            from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
        except ImportError:
            return 0
        try:
            return int(get_tensor_model_parallel_rank())
        except (AssertionError, RuntimeError):
            return 0

    def _layout_from_config(self, vllm_config, kv_cache_config):
        """The KV layout vLLM will allocate, from its KV cache config; None
        when vLLM gave none (the worker then learns it from the tensors)."""
        groups = getattr(kv_cache_config, "kv_cache_groups", None) or []
        if not groups:
            return None
        spec = groups[0].kv_cache_spec
        num_layers = 0
        for g in groups:
            s = g.kv_cache_spec
            if (s.block_size, s.num_kv_heads, s.head_size, str(s.dtype)) != (
                spec.block_size,
                spec.num_kv_heads,
                spec.head_size,
                str(spec.dtype),
            ):
                raise ValueError("kv_cache_config: kvtier needs one KV shape for every layer")
            num_layers += len(g.layer_names)
        dtype = kvtier.dtype_from_torch(self.config.dtype or spec.dtype)
        return _LayoutSpec(num_layers, spec.num_kv_heads, spec.head_size, spec.block_size, dtype)

    def _salt(self, request):
        """What names a request's namespace beyond the model: its cache salt
        (the connector's joined with the request's) and its LoRA adapter,
        whose KV differs from the base model's for the same tokens."""
        request_salt = getattr(request, "cache_salt", None) or ""
        if self.config.cache_salt and request_salt:
            salt = f"{self.config.cache_salt}\x00{request_salt}"
        else:
            salt = self.config.cache_salt or request_salt
        lora = getattr(request, "lora_request", None)
        if lora is None:
            return salt
        name = getattr(lora, "lora_name", None) or str(getattr(lora, "lora_int_id", ""))
        return (salt, name)

    def _cacheable(self, request):
        """Whether the request's KV can be keyed: with token-id keys, a prompt
        with images or other multimodal inputs (their placeholder tokens are
        the same for different inputs) or with prompt embeddings is not."""
        if self.config.key_source == "block_hashes":
            return True  # vLLM's block hashes cover these inputs
        for attr in ("mm_features", "mm_hashes", "mm_positions", "mm_inputs"):
            if getattr(request, attr, None):
                return False
        return getattr(request, "prompt_embeds", None) is None

    def _namespace(self, salt, tp_rank):
        """`salt`: a cache salt, or (cache salt, LoRA adapter name) from _salt.
        The adapter goes into the model revision (operator-set, so the
        adapter's name cannot be forged through a request's cache salt, and
        tenant grants by model id and salt still apply)."""
        key = (salt, tp_rank)
        cache_salt, lora = (salt, "") if isinstance(salt, str) else salt
        revision = self.config.model_revision
        if lora:
            revision = f"{revision}\x00lora:{lora}"
        ns = self._namespaces.get(key)
        if ns is None:
            if self._layout is None:
                raise ValueError("kvtier: the KV layout is unknown (no kv_cache_config)")
            ns = kvtier.make_namespace(
                model=self.config.model,
                model_revision=revision,
                num_layers=self._layout.num_layers,
                num_kv_heads=self._layout.num_kv_heads,
                head_size=self._layout.head_size,
                dtype=self._layout.dtype,
                tokens_per_block=self._layout.block_size,
                tokens_per_chunk=self.config.tokens_per_chunk,
                tp_rank=tp_rank,
                tp_size=self.config.tp_size,
                cache_salt=cache_salt,
            )
            self._namespaces[key] = ns
        return ns

    def _chunks(self, request, salt, max_tokens):
        """Full chunks of the request's first `max_tokens` tokens."""
        ns = self._namespace(salt, 0)
        bs = self._layout.block_size
        num_blocks = max_tokens // bs
        if self.config.key_source == "block_hashes":
            hashes = list(getattr(request, "block_hashes", None) or [])[:num_blocks]
            chunks = ns.chunks_from_engine_hashes([_hash_bytes(h) for h in hashes])
        else:
            tokens = list(getattr(request, "all_token_ids", None) or request.prompt_token_ids)
            chunks = ns.chunks(tokens[: num_blocks * bs])
        return chunks

    # ---- scheduler side ------------------------------------------------------------

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        """Tokens beyond num_computed_tokens that the cache holds: whole
        chunks of the prompt, at most num_tokens - 1 tokens. Never loads
        asynchronously (the second value is always False)."""
        self._lookups.pop(request.request_id, None)
        if not self._cacheable(request):
            self.counters["uncacheable_requests"] += 1
            return 0, False
        salt = self._salt(request)
        num_tokens = getattr(request, "num_tokens", None)
        if num_tokens is None:
            num_tokens = len(request.prompt_token_ids or ())
        num_tokens = int(num_tokens)
        chunks = self._chunks(request, salt, max(num_tokens - 1, 0))
        if not chunks:
            return 0, False
        keys = kvtier.Namespace.keys(chunks)
        self.counters["lookups"] += 1
        matched = len(chunks)
        try:
            for rank in range(self.config.tp_size):
                result = self._cache.lookup(self._namespace(salt, rank), keys)
                matched = min(matched, result.matched)
                if matched == 0:
                    break
        except kvtier.Error as e:
            self.counters["lookup_errors"] += 1
            logger.warning("kvtier: lookup of request %s failed: %s", request.request_id, e)
            return 0, False
        self._lookups[request.request_id] = _Lookup(num_computed_tokens, chunks, matched)
        hit_tokens = matched * self.config.tokens_per_chunk
        if hit_tokens <= num_computed_tokens:
            return 0, False
        self.counters["matched_tokens"] += hit_tokens - num_computed_tokens
        return hit_tokens - num_computed_tokens, False

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        state = self._requests.get(request.request_id)
        if state is None:
            state = _RequestState(
                request=request, salt=self._salt(request), cacheable=self._cacheable(request)
            )
            self._requests[request.request_id] = state
        lookup = self._lookups.pop(request.request_id, None)
        if lookup is not None:
            state.saved_chunks = max(state.saved_chunks, lookup.matched)
        if num_external_tokens > 0:
            if lookup is None:
                raise RuntimeError(
                    f"kvtier: {num_external_tokens} external tokens for request "
                    f"{request.request_id} without a lookup"
                )
            state.load_start = lookup.num_computed_tokens
            state.load_end = lookup.num_computed_tokens + num_external_tokens
            state.load_chunks = lookup.chunks

    def build_connector_meta(self, scheduler_output):
        meta = KVTierConnectorMetadata()
        tpc = self.config.tokens_per_chunk
        bs = self._layout.block_size
        scheduled = getattr(scheduler_output, "num_scheduled_tokens", {}) or {}
        touched = []
        for new_req in getattr(scheduler_output, "scheduled_new_reqs", []) or []:
            state = self._requests.get(new_req.req_id)
            if state is None:
                continue
            state.block_ids = list(new_req.block_ids[0])
            done = int(new_req.num_computed_tokens) + int(scheduled.get(new_req.req_id, 0))
            touched.append((state, done))
        cached = getattr(scheduler_output, "scheduled_cached_reqs", None)
        if cached is not None:
            resumed = set(getattr(cached, "resumed_req_ids", None) or [])
            for i, req_id in enumerate(cached.req_ids):
                state = self._requests.get(req_id)
                if state is None:
                    continue
                new_ids = cached.new_block_ids[i]
                if req_id in resumed:
                    state.block_ids = list(new_ids[0]) if new_ids is not None else []
                elif new_ids is not None:
                    state.block_ids.extend(new_ids[0])
                done = int(cached.num_computed_tokens[i]) + int(scheduled.get(req_id, 0))
                touched.append((state, done))

        for state, done in touched:
            req_id = state.request.request_id
            if state.load_end > state.load_start:
                loads = []
                for chunk in state.load_chunks:
                    end = chunk.first_token + chunk.num_tokens
                    if end <= state.load_start or chunk.first_token >= state.load_end:
                        continue
                    first_block = chunk.first_token // bs
                    ids = state.block_ids[first_block : first_block + chunk.num_tokens // bs]
                    skip = max(state.load_start - chunk.first_token, 0)
                    loads.append(ChunkLoad(chunk, ids, skip))
                meta.loads.append(RequestLoad(req_id, state.salt, loads))
                state.load_start = state.load_end = 0
                state.load_chunks = []
            if self.config.save_policy == "none" or not state.cacheable:
                continue
            limit = done
            if self.config.save_policy == "prompt":
                prompt = getattr(state.request, "num_prompt_tokens", None)
                if prompt is None:
                    prompt = len(state.request.prompt_token_ids or ())
                limit = min(limit, int(prompt))
            if limit < (state.saved_chunks + 1) * tpc:
                continue
            chunks = self._chunks(state.request, state.salt, limit)
            for chunk in chunks[state.saved_chunks :]:
                first_block = chunk.first_token // bs
                ids = state.block_ids[first_block : first_block + chunk.num_tokens // bs]
                if len(ids) * bs < chunk.num_tokens:
                    break
                meta.saves.append(ChunkSave(req_id, state.salt, chunk, ids))
                state.saved_chunks += 1

        for req_id in getattr(scheduler_output, "finished_req_ids", None) or ():
            self._requests.pop(req_id, None)
            self._lookups.pop(req_id, None)
        return meta

    def request_finished(self, request, block_ids):
        """Saves finish within their step, so blocks can be freed now."""
        self._requests.pop(request.request_id, None)
        self._lookups.pop(request.request_id, None)
        return False, None

    # ---- worker side -----------------------------------------------------------------

    def register_kv_caches(self, kv_caches):
        """kv_caches: layer name -> tensor [2, num_blocks, block_size,
        num_kv_heads, head_size], in the model's layer order."""
        self._layer_names = list(kv_caches)
        self._layer_index = {name: i for i, name in enumerate(self._layer_names)}
        tensors = [kv_caches[name] for name in self._layer_names]
        layout = kvtier.vllm_flash_layout(tensors)
        if self.config.dtype and kvtier.dtype_from_torch(self.config.dtype) != layout.dtype:
            raise ValueError(
                f"kv_connector_extra_config.dtype: {self.config.dtype} but the KV cache "
                f"tensors are {tensors[0].dtype}"
            )
        seen = _LayoutSpec(
            layout.num_layers,
            layout.num_kv_heads,
            layout.head_size,
            layout.tokens_per_block,
            layout.dtype,
        )
        if self._layout is None:
            self._layout = seen
        elif self._layout != seen:
            raise ValueError(f"kvtier: KV tensors {seen} differ from vLLM's KV cache config {self._layout}")
        device = self.config.device
        if device == "auto":
            device = "cuda" if getattr(tensors[0], "is_cuda", False) else "cpu"
        self._runtime = kvtier.DeviceRuntime.create(device)
        self._copier = self._runtime.create_kv_copier(layout)
        self._chunk_bytes = layout.payload_bytes(self.config.tokens_per_chunk)
        self._namespace(self.config.cache_salt, self.config.tp_rank).layout  # validates now

    def _buffer(self):
        if self._free_buffers:
            return self._free_buffers.pop()
        return self._runtime.alloc_pinned(self._chunk_bytes)

    def _release(self, buffers):
        self._free_buffers.extend(buffers)

    def _sub_payload(self, buf, chunk, skip):
        """The payload of the chunk's tokens [skip, num_tokens), cut from the
        whole chunk's payload (layer-major, [tokens][heads][head_size] per
        layer and kv tensor)."""
        layout = self._copier.layout
        per_token = layout.tensor_bytes(1)
        slabs = layout.num_layers * layout.kv_tensors
        n = chunk.num_tokens
        out = self._buffer()
        src = memoryview(buf)
        dst = memoryview(out)
        keep = (n - skip) * per_token
        for s in range(slabs):
            base = s * n * per_token
            dst[s * keep : (s + 1) * keep] = src[base + skip * per_token : base + n * per_token]
        return out

    def start_load_kv(self, forward_context, **kwargs):
        meta = self._get_connector_metadata()
        self._pending_loads = []
        self._layers_loaded = set()
        bs = self._layout.block_size
        for load in meta.loads:
            ns = self._namespace(load.salt, self.config.tp_rank)
            transfers = []
            buffers = []
            for i, item in enumerate(load.chunks):
                buf = self._buffer()
                buffers.append(buf)
                want = ns.payload_bytes(item.chunk.num_tokens)
                try:
                    got = self._cache.load(ns, item.chunk.key, buf)
                    if got != want:
                        raise kvtier.DataLossError(
                            f"chunk {item.chunk.key.hex()}: {got} bytes, expected {want}"
                        )
                except kvtier.Error as e:
                    # This chunk and every later one of the request stay
                    # unloaded; vLLM recomputes their blocks.
                    failed = load.chunks[i:]
                    self._load_failed_reqs.add(load.req_id)
                    for f in failed:
                        self._load_error_blocks.update(f.block_ids[f.skip_tokens // bs :])
                    self.counters["load_errors"] += len(failed)
                    logger.warning("kvtier: load for request %s failed: %s", load.req_id, e)
                    break
                if item.skip_tokens:
                    sub = self._sub_payload(buf, item.chunk, item.skip_tokens)
                    buffers.append(sub)
                    ids = item.block_ids[item.skip_tokens // bs :]
                    kept = item.chunk.num_tokens - item.skip_tokens
                    view = memoryview(sub)[: self._copier.layout.payload_bytes(kept)]
                    transfers.append((ids, kept, view))
                else:
                    transfers.append((item.block_ids, item.chunk.num_tokens, buf))
                self.counters["loaded_chunks"] += 1
                self.counters["loaded_tokens"] += item.chunk.num_tokens - item.skip_tokens
            if transfers:
                self._pending_loads.append((transfers, buffers))
            else:
                self._release(buffers)
        if not self.config.layerwise_load:
            for transfers, buffers in self._pending_loads:
                self._copier.scatter(transfers)
            self._finish_loads()

    def _finish_loads(self):
        if self._pending_loads:
            self._runtime.synchronize_stream()
        for _, buffers in self._pending_loads:
            self._release(buffers)
        self._pending_loads = []

    def wait_for_layer_load(self, layer_name):
        if not self._pending_loads:
            return
        layer = self._layer_index.get(layer_name)
        if layer is None or layer in self._layers_loaded:
            return
        for transfers, _ in self._pending_loads:
            self._copier.scatter_layer(layer, transfers)
        self._runtime.synchronize_stream()
        self._layers_loaded.add(layer)
        if len(self._layers_loaded) == len(self._layer_names):
            self._finish_loads()

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        if not meta.saves:
            return
        layer = self._layer_index.get(layer_name)
        if layer is None or layer in self._layers_saved:
            return
        self._prepare_saves(meta)
        self._copier.gather_layer(layer, [t for *_, t in self._pending_saves])
        self._layers_saved.add(layer)

    def _prepare_saves(self, meta):
        if self._pending_saves or not meta.saves:
            return
        for save in meta.saves:
            ns = self._namespace(save.salt, self.config.tp_rank)
            buf = self._buffer()
            self._pending_saves.append((save, ns, buf, (save.block_ids, save.chunk.num_tokens, buf)))

    def _agree_on_load_failures(self, meta):
        """With tensor parallelism every rank learns which of this step's
        loads failed on any rank: the step's KV of such a request is wrong on
        every rank (each layer's input mixes all heads), not only on the rank
        whose load failed."""
        if self.config.tp_size <= 1 or not meta.loads:
            return
        req_ids = [load.req_id for load in meta.loads]
        flags = [1 if r in self._load_failed_reqs else 0 for r in req_ids]
        for req_id, failed in zip(req_ids, self._all_ranks_max(flags)):
            if failed:
                self._load_failed_reqs.add(req_id)

    def _all_ranks_max(self, flags):
        """Element-wise maximum of `flags` over vLLM's tensor-parallel group.
        Every rank gets the same metadata, so all call it in the same step."""
        try:
            import torch
            from vllm.distributed.parallel_state import get_tp_group
        except ImportError:  # no vLLM: one process plays every rank
            return flags
        t = torch.tensor(flags, dtype=torch.int32)
        torch.distributed.all_reduce(
            t, op=torch.distributed.ReduceOp.MAX, group=get_tp_group().cpu_group
        )
        return t.tolist()

    def wait_for_save(self):
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        self._agree_on_load_failures(meta)
        self._prepare_saves(meta)
        if self._pending_saves:
            missing = [i for i in range(len(self._layer_names)) if i not in self._layers_saved]
            transfers = [t for *_, t in self._pending_saves]
            if len(missing) == len(self._layer_names):
                self._copier.gather(transfers)
            else:
                for layer in missing:
                    self._copier.gather_layer(layer, transfers)
            self._runtime.synchronize_stream()
        for save, ns, buf, _ in self._pending_saves:
            if save.req_id in self._load_failed_reqs:
                # Computed over blocks that a failed load left unwritten.
                self.counters["save_errors"] += 1
                continue
            try:
                payload = memoryview(buf)[: ns.payload_bytes(save.chunk.num_tokens)]
                self._cache.save(ns, save.chunk, payload)
                self.counters["saved_chunks"] += 1
            except kvtier.Error as e:
                self.counters["save_errors"] += 1
                logger.warning("kvtier: save for request %s skipped: %s", save.req_id, e)
        self._release([buf for _, _, buf, _ in self._pending_saves])
        self._pending_saves = []
        self._layers_saved = set()

    def get_finished(self, finished_req_ids):
        self._load_failed_reqs.difference_update(finished_req_ids or ())
        return None, None

    def get_block_ids_with_load_errors(self):
        failed = self._load_error_blocks
        self._load_error_blocks = set()
        return failed

    # ---- statistics ----------------------------------------------------------------------

    def cache_stats(self):
        """The cache's statistics (kvtier.Cache.stats()): lookups, per-tier
        hits, misses, saves, evictions, bytes and corrupt chunks."""
        return self._cache.stats()

    def stats(self):
        """This connector's counters (see docs/vllm.md)."""
        return dict(self.counters)
