"""kvtier: tiered KV-cache offload for LLM inference, from Python.

The native module (kvtier._kvtier) binds the public C++ API:

* keys and namespaces: ``BlockKey``, ``NamespaceOptions``, ``KvLayout``,
  ``Namespace`` (chunk refs from token ids or from engine block hashes);
* engine layouts: ``EngineLayout`` (pointer, shape, strides, dtype);
* the cache: ``Cache.create`` (embedded, this process), ``Client.create`` and
  ``open_cache`` (embedded or the kvtierd daemon);
* the data path: ``DeviceRuntime`` and ``KvCopier`` (gather/scatter between
  engine blocks and chunk payloads, on the CPU or with CUDA).

This file adds helpers that read torch tensors through their public
attributes (``data_ptr()``, ``shape``, ``stride()``, ``dtype``) without
importing torch, so ``import kvtier`` never needs torch.
"""

from kvtier._kvtier import (  # noqa: F401  (re-exported)
    BlockKey,
    Cache,
    CacheConfig,
    CacheOptions,
    ChunkLocation,
    ChunkPin,
    ChunkRef,
    Client,
    ClientOptions,
    DataLossError,
    DeviceRuntime,
    DType,
    EngineLayout,
    EngineStrides,
    Error,
    FailedPreconditionError,
    HostBuffer,
    InvalidArgumentError,
    KvCopier,
    KvLayout,
    LookupResult,
    Namespace,
    NamespaceOptions,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    Tier,
    UnauthenticatedError,
    UnavailableError,
    dtype_name,
    dtype_size,
    hash_block,
    key_from_engine_hash,
    open_cache,
    parse_dtype,
)

__all__ = [name for name in dir() if not name.startswith("_")] + [
    "dtype_from_torch",
    "make_namespace",
    "vllm_flash_layout",
]

_TORCH_DTYPES = {
    "torch.float16": DType.float16,
    "torch.half": DType.float16,
    "torch.bfloat16": DType.bfloat16,
    "torch.float32": DType.float32,
    "torch.float": DType.float32,
    "torch.float8_e4m3fn": DType.float8_e4m3,
    "torch.float8_e5m2": DType.float8_e5m2,
    "torch.uint8": DType.uint8,
}


def dtype_from_torch(dtype):
    """The kvtier DType of a torch dtype (or of a name kvtier knows)."""
    if isinstance(dtype, DType):
        return dtype
    name = str(dtype)
    if name in _TORCH_DTYPES:
        return _TORCH_DTYPES[name]
    if name.startswith("torch."):
        raise InvalidArgumentError(f"dtype: {name} has no kvtier equivalent")
    return parse_dtype(name)


def make_namespace(
    *,
    model,
    num_layers,
    num_kv_heads,
    head_size,
    dtype,
    tokens_per_block,
    tokens_per_chunk=256,
    kv_tensors=2,
    model_revision="",
    tp_rank=0,
    tp_size=1,
    pp_rank=0,
    pp_size=1,
    cache_salt="",
):
    """Builds and validates a Namespace from keyword arguments."""
    layout = KvLayout(
        num_layers=num_layers,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        kv_tensors=kv_tensors,
        tokens_per_block=tokens_per_block,
        dtype=dtype_from_torch(dtype),
    )
    o = NamespaceOptions()
    o.model_id = model
    o.model_revision = model_revision
    o.layout = layout
    o.tokens_per_chunk = tokens_per_chunk
    o.tp_rank = tp_rank
    o.tp_size = tp_size
    o.pp_rank = pp_rank
    o.pp_size = pp_size
    o.cache_salt = cache_salt
    return Namespace.create(o)


def vllm_flash_layout(tensors):
    """EngineLayout of vLLM FlashAttention KV tensors, one per layer.

    Each tensor has the logical shape [2, num_blocks, block_size,
    num_kv_heads, head_size] (NHD, or an HND tensor viewed in that order):
    its strides say where every element lives, so both work. All tensors
    must share shape, strides and dtype. They may live on the CPU or on a
    CUDA device (use the matching DeviceRuntime).
    """
    tensors = list(tensors)
    if not tensors:
        raise InvalidArgumentError("tensors: at least one layer is needed")
    first = tensors[0]
    shape = tuple(int(x) for x in first.shape)
    strides = tuple(int(x) for x in first.stride())
    if len(shape) != 5 or shape[0] != 2:
        raise InvalidArgumentError(
            f"tensors[0].shape = {shape}: expected [2, num_blocks, block_size, "
            "num_kv_heads, head_size]"
        )
    for i, t in enumerate(tensors[1:], start=1):
        if tuple(int(x) for x in t.shape) != shape or tuple(int(x) for x in t.stride()) != strides:
            raise InvalidArgumentError(f"tensors[{i}]: shape or strides differ from tensors[0]")
        if str(t.dtype) != str(first.dtype):
            raise InvalidArgumentError(f"tensors[{i}].dtype = {t.dtype}, tensors[0] is {first.dtype}")
    return EngineLayout(
        layer_bases=[int(t.data_ptr()) for t in tensors],
        strides=EngineStrides(
            kv=strides[0], block=strides[1], token=strides[2], head=strides[3], dim=strides[4]
        ),
        dtype=dtype_from_torch(first.dtype),
        num_layers=len(tensors),
        num_blocks=shape[1],
        tokens_per_block=shape[2],
        num_kv_heads=shape[3],
        head_size=shape[4],
        kv_tensors=2,
    )
