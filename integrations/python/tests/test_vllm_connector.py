"""KVTierConnector driven in vLLM's call order, with small stand-ins of the
shape of vLLM's Request, KVCacheBlocks, SchedulerOutput and configs, and
real KV tensors in vLLM's FlashAttention layout on the CPU."""

import ctypes
import hashlib
import itertools
import types

import pytest
import torch

import kvtier
from kvtier.vllm.connector import KVConnectorRole, KVTierConnector

BLOCK = 4
TPC = 8  # tokens per chunk: two blocks
LAYERS = ["model.layers.0.attn", "model.layers.1.attn", "model.layers.2.attn"]
HEADS = 2
HEAD = 8
NUM_BLOCKS = 128


# ---- stand-ins with the shape of vLLM's types ----------------------------------------


class KVTransferConfig:
    def __init__(self, extra):
        self.kv_connector = "KVTierConnector"
        self.kv_connector_module_path = "kvtier.vllm.connector"
        self.kv_role = "kv_both"
        self.is_kv_producer = True
        self.kv_connector_extra_config = extra

    def get_from_extra_config(self, key, default):
        return self.kv_connector_extra_config.get(key, default)


def vllm_config(extra, tp_size=1):
    return types.SimpleNamespace(
        kv_transfer_config=KVTransferConfig(extra),
        model_config=types.SimpleNamespace(model="test/llama", revision=None),
        parallel_config=types.SimpleNamespace(tensor_parallel_size=tp_size),
        cache_config=types.SimpleNamespace(block_size=BLOCK),
    )


def kv_cache_config(dtype):
    spec = types.SimpleNamespace(block_size=BLOCK, num_kv_heads=HEADS, head_size=HEAD, dtype=dtype)
    return types.SimpleNamespace(
        num_blocks=NUM_BLOCKS,
        kv_cache_groups=[types.SimpleNamespace(kv_cache_spec=spec, layer_names=list(LAYERS))],
    )


class Request:
    _ids = itertools.count()

    def __init__(self, tokens, cache_salt=None):
        self.request_id = f"req-{next(Request._ids)}"
        self.prompt_token_ids = list(tokens)
        self.all_token_ids = list(tokens)
        self.num_tokens = len(tokens)
        self.cache_salt = cache_salt
        self.num_computed_tokens = 0
        # vLLM's block hashes: a sha256 chain over full blocks, the salt in
        # the first block's extra keys.
        self.block_hashes = []
        parent = b""
        for b in range(len(tokens) // BLOCK):
            extra = repr(cache_salt).encode() if b == 0 and cache_salt else b""
            block = repr(tokens[b * BLOCK : (b + 1) * BLOCK]).encode()
            parent = hashlib.sha256(parent + block + extra).digest()
            self.block_hashes.append(parent)


class KVCacheBlocks:
    def __init__(self, ids):
        self.ids = list(ids)

    def get_block_ids(self):
        return (list(self.ids),)


def new_request_data(req, block_ids, num_computed):
    return types.SimpleNamespace(
        req_id=req.request_id,
        prompt_token_ids=req.prompt_token_ids,
        block_ids=(list(block_ids),),
        num_computed_tokens=num_computed,
        mm_features=[],
    )


def cached_request_data(req_ids, new_block_ids, num_computed):
    return types.SimpleNamespace(
        req_ids=list(req_ids),
        resumed_req_ids=set(),
        new_token_ids=[[] for _ in req_ids],
        new_block_ids=list(new_block_ids),
        num_computed_tokens=list(num_computed),
    )


def scheduler_output(new=(), cached=None, scheduled=None, finished=()):
    return types.SimpleNamespace(
        scheduled_new_reqs=list(new),
        scheduled_cached_reqs=cached or cached_request_data([], [], []),
        num_scheduled_tokens=dict(scheduled or {}),
        finished_req_ids=set(finished),
    )


# ---- the engine: paged KV, a block allocator and a deterministic model -------------


def model_kv(tokens, start, end, layer, dtype):
    """KV of tokens [start, end) of layer `layer`: a function of each token's
    whole prefix, as attention KV is. Shape [2, end - start, HEADS, HEAD]."""
    seeds = []
    s = 17
    for t in tokens[:end]:
        s = (s * 1000003 + t + 1) % 2147483647
        seeds.append(s)
    seeds = torch.tensor(seeds[start:end], dtype=torch.float64)
    idx = torch.arange(2 * HEADS * HEAD, dtype=torch.float64).reshape(2, 1, HEADS, HEAD)
    return torch.sin(seeds.reshape(1, -1, 1, 1) * 1e-3 * (idx + 1) + layer).to(dtype)


class Engine:
    """One vLLM instance: a scheduler-side and a worker-side connector and
    the KV tensors, driven in the order vLLM calls them."""

    def __init__(self, extra, dtype=torch.float16, tp_size=1, layerwise=False):
        extra = dict(extra, tokens_per_chunk=TPC, layerwise_load=layerwise)
        self.dtype = dtype
        self.scheduler = KVTierConnector(
            vllm_config(extra, tp_size), KVConnectorRole.SCHEDULER, kv_cache_config(dtype)
        )
        self.worker = KVTierConnector(
            vllm_config(extra, tp_size), KVConnectorRole.WORKER, kv_cache_config(dtype)
        )
        self.kv = {
            name: torch.zeros(2, NUM_BLOCKS, BLOCK, HEADS, HEAD, dtype=dtype) for name in LAYERS
        }
        self.worker.register_kv_caches(self.kv)
        self.free = list(range(NUM_BLOCKS))
        self.finished = []

    def run(self, req, step_tokens=None, local_tokens=0, before_load=None):
        """Prefills `req`, runs one decode step and returns a record of what
        happened. The first `local_tokens` (a block multiple) play vLLM's own
        prefix cache: the engine computes them itself before asking the
        connector. `before_load` runs between the lookup and the first step."""
        sched, worker = self.scheduler, self.worker
        n = req.num_tokens
        blocks = [self.free.pop(0) for _ in range((n + BLOCK - 1) // BLOCK)]
        for i, name in enumerate(LAYERS):
            self._compute(req, blocks, 0, local_tokens, i, name)
        ext, is_async = sched.get_num_new_matched_tokens(req, local_tokens)
        assert is_async is False
        sched.update_state_after_alloc(req, KVCacheBlocks(blocks), ext)
        if before_load is not None:
            before_load()
        computed = local_tokens + ext
        record = types.SimpleNamespace(
            blocks=blocks, ext=ext, errors=set(), after_load={}, saves_per_step=[]
        )
        first_step = True
        step_tokens = step_tokens or n
        num_computed = computed
        decoded = False
        while not decoded:
            # The prefill steps, then one decode step (its token's KV is not
            # modelled).
            todo = min(step_tokens, n - computed) if computed < n else 1
            decoded = computed >= n
            if first_step:
                out = scheduler_output(
                    new=[new_request_data(req, blocks, num_computed)],
                    scheduled={req.request_id: todo},
                    finished=self.finished,
                )
            else:
                out = scheduler_output(
                    cached=cached_request_data([req.request_id], [None], [computed]),
                    scheduled={req.request_id: todo},
                    finished=self.finished,
                )
            self.finished = []
            meta = sched.build_connector_meta(out)
            record.saves_per_step.append(len(meta.saves))
            worker.bind_connector_metadata(meta)
            worker.start_load_kv(types.SimpleNamespace(attn_metadata={}))
            for i, name in enumerate(LAYERS):
                worker.wait_for_layer_load(name)
                if first_step:
                    # What the load left in this layer, before the model runs.
                    record.after_load[name] = self.kv[name][:, blocks].clone()
                if not decoded:
                    self._compute(req, blocks, computed, computed + todo, i, name)
                worker.save_kv_layer(name, self.kv[name], None)
            worker.wait_for_save()
            assert worker.get_finished(set()) == (None, None)
            worker.clear_connector_metadata()
            errors = worker.get_block_ids_with_load_errors()
            first_step = False
            if errors:
                # vLLM drops the step's output and recomputes from the first
                # block that failed to load.
                record.errors |= errors
                computed = min(blocks.index(b) for b in errors) * BLOCK
                decoded = False
                continue
            if not decoded:
                computed += todo
        assert sched.request_finished(req, blocks) == (False, None)
        self.finished.append(req.request_id)
        return record

    def _compute(self, req, blocks, start, end, layer, name):
        if end <= start:
            return
        values = model_kv(req.prompt_token_ids, start, end, layer, self.dtype)
        # Attention: KV computed over a context that is not the right one
        # (blocks a failed load left unwritten) comes out wrong.
        if start > 0:
            want = model_kv(req.prompt_token_ids, 0, start, layer, self.dtype)
            have = torch.stack(
                [self.kv[name][:, blocks[t // BLOCK], t % BLOCK] for t in range(start)], dim=1
            )
            if not torch.equal(want, have):
                values = values + 1
        for t in range(start, end):
            self.kv[name][:, blocks[t // BLOCK], t % BLOCK] = values[:, t - start]

    def block_bytes(self, blocks):
        return [bytes(self.kv[name][:, blocks].contiguous().view(torch.uint8).numpy()) for name in LAYERS]


_names = itertools.count()


@pytest.fixture(params=["embedded", "daemon"])
def extra(request, tmp_path):
    if request.param == "embedded":
        return {"mode": "embedded", "embedded_name": f"t{next(_names)}", "dram_capacity_bytes": 64 << 20}
    daemon = request.getfixturevalue("kvtierd")
    return {"mode": "daemon", "socket_path": daemon.socket_path}


PREFIX = list(range(1000, 1000 + 37))  # 37 shared tokens: 4 whole chunks


def test_shared_prefix_is_loaded_byte_identical(extra):
    engine = Engine(extra)
    r1 = Request(PREFIX + [1, 2, 3, 4, 5])
    rec1 = engine.run(r1)
    assert rec1.ext == 0
    assert engine.worker.stats()["saved_chunks"] == 5  # 42 prompt tokens: 5 whole chunks

    r2 = Request(PREFIX + [9, 9, 9, 9, 9, 9, 9])
    rec2 = engine.run(r2)
    assert rec2.ext == 32  # the shared 37 tokens rounded down to chunks
    assert rec2.errors == set()
    assert engine.worker.stats()["loaded_tokens"] == 32
    # Loaded blocks hold request 1's bytes; the model never wrote them.
    assert engine.block_bytes(rec2.blocks[:8]) == engine.block_bytes(rec1.blocks[:8])
    for name in LAYERS:
        loaded = rec2.after_load[name][:, :8]
        assert torch.equal(loaded, engine.kv[name][:, rec1.blocks[:8]])
        assert torch.count_nonzero(rec2.after_load[name][:, 8:]) == 0


def test_whole_prompt_never_matched(extra):
    engine = Engine(extra)
    tokens = list(range(500, 532))  # exactly 4 chunks
    engine.run(Request(tokens))
    rec = engine.run(Request(tokens))
    # The last token is recomputed, so the last chunk is not offered.
    assert rec.ext == 24


def test_local_prefix_hit_loads_only_the_rest_and_chunked_prefill_saves(extra):
    engine = Engine(extra, layerwise=True)
    rec1 = engine.run(Request(PREFIX + [7] * 11), step_tokens=5)
    assert engine.worker.stats()["saved_chunks"] == 6
    rec2 = engine.run(Request(PREFIX + [8] * 3), local_tokens=4)
    assert rec2.ext == 28
    assert engine.worker.stats()["loaded_tokens"] == 28
    assert engine.block_bytes(rec2.blocks[:8]) == engine.block_bytes(rec1.blocks[:8])


def test_tenants_with_different_salts_never_hit_each_other(extra):
    a = Engine(dict(extra, cache_salt="deployment"))
    a.run(Request(PREFIX, cache_salt="tenant-a"))
    assert a.run(Request(PREFIX + [1], cache_salt="tenant-b")).ext == 0
    assert a.run(Request(PREFIX + [1])).ext == 0
    assert a.run(Request(PREFIX + [1], cache_salt="tenant-a")).ext == 32
    # The connector-level salt alone separates deployments too.
    b = Engine(dict(extra, cache_salt="other-deployment"))
    assert b.run(Request(PREFIX + [1], cache_salt="tenant-a")).ext == 0


def test_other_tp_rank_or_dtype_misses(extra):
    Engine(extra).run(Request(PREFIX))
    assert Engine(extra).run(Request(PREFIX + [2])).ext == 32
    assert Engine(dict(extra, tp_rank=1), tp_size=2).run(Request(PREFIX + [2])).ext == 0
    assert Engine(extra, dtype=torch.bfloat16).run(Request(PREFIX + [2])).ext == 0
    assert Engine(dict(extra, model="other/model")).run(Request(PREFIX + [2])).ext == 0


def test_token_id_keys(extra):
    engine = Engine(dict(extra, key_source="token_ids"))
    rec1 = engine.run(Request(PREFIX + [3]))
    rec2 = engine.run(Request(PREFIX + [4, 4]))
    assert rec2.ext == 32
    assert engine.block_bytes(rec2.blocks[:8]) == engine.block_bytes(rec1.blocks[:8])


def test_save_policy_none_saves_nothing(extra):
    engine = Engine(dict(extra, save_policy="none"))
    engine.run(Request(PREFIX))
    assert engine.worker.stats()["saved_chunks"] == 0
    assert engine.run(Request(PREFIX + [5])).ext == 0


def test_damaged_chunk_is_reported_and_never_used(extra):
    engine = Engine(extra)
    rec1 = engine.run(Request(PREFIX + [1]))
    corrupt_before = engine.worker.cache_stats()["tiers"][0]["corrupt_chunks"]
    # Damage the header of the third chunk in the cache's memory (in daemon
    # mode: in kvtierd's arena, which the client maps).
    cache = engine.worker._cache
    ns = engine.worker._namespace("", 0)
    third = ns.chunks_from_engine_hashes(Request(PREFIX).block_hashes)[2]
    with cache.pin(ns, third.key) as pin:
        ctypes.memset(pin.address - 64, 0x5A, 16)
    rec2 = engine.run(Request(PREFIX + [2, 2]))
    assert rec2.ext == 32  # the lookup still saw four chunks
    # Chunks 3 and 4 failed: their blocks (4..7) are reported...
    assert rec2.errors == set(rec2.blocks[4:8])
    assert engine.worker.stats()["load_errors"] == 2
    # ...and were not written by the load; chunks 1 and 2 were.
    for name in LAYERS:
        assert torch.count_nonzero(rec2.after_load[name][:, 4:8]) == 0
        assert torch.equal(rec2.after_load[name][:, :4], engine.kv[name][:, rec1.blocks[:4]])
    # After recomputation the blocks are right again.
    assert engine.block_bytes(rec2.blocks[:8]) == engine.block_bytes(rec1.blocks[:8])
    assert engine.worker.cache_stats()["tiers"][0]["corrupt_chunks"] == corrupt_before + 1


def evict(engine, extra, ns, key):
    if extra["mode"] == "embedded":
        engine.worker._cache.remove(ns, key)
    else:
        engine.worker._cache.evict(ns, [key])


def test_evicted_chunk_between_lookup_and_load_is_reported(extra):
    engine = Engine(extra)
    engine.run(Request(PREFIX + [1]))
    req = Request(PREFIX + [3])
    ext, _ = engine.scheduler.get_num_new_matched_tokens(req, 0)
    assert ext == 32
    ns = engine.worker._namespace("", 0)
    second = ns.chunks_from_engine_hashes(req.block_hashes)[1]
    evict(engine, extra, ns, second.key)
    blocks = [engine.free.pop(0) for _ in range(10)]
    engine.scheduler.update_state_after_alloc(req, KVCacheBlocks(blocks), ext)
    meta = engine.scheduler.build_connector_meta(
        scheduler_output(new=[new_request_data(req, blocks, 32)], scheduled={req.request_id: 6})
    )
    engine.worker.bind_connector_metadata(meta)
    engine.worker.start_load_kv(types.SimpleNamespace(attn_metadata={}))
    assert engine.worker.get_block_ids_with_load_errors() == set(blocks[2:8])
    assert engine.worker.get_block_ids_with_load_errors() == set()


def test_kv_computed_over_a_failed_load_is_never_saved(extra):
    engine = Engine(extra)
    engine.run(Request(PREFIX + [1]))  # chunks 0-3
    req = Request(PREFIX + list(range(2000, 2020)))  # 57 tokens: chunks 0-6
    ns = engine.worker._namespace("", 0)
    chunks = ns.chunks_from_engine_hashes(req.block_hashes)
    saved = engine.worker.stats()["saved_chunks"]
    # Chunked prefill: chunks 4-6 complete in later steps, over KV that an
    # engine scheduling ahead (async scheduling) may not have recomputed yet.
    rec = engine.run(
        req, step_tokens=8, before_load=lambda: evict(engine, extra, ns, chunks[1].key)
    )
    assert rec.ext == 32
    assert rec.errors == set(rec.blocks[2:8])
    # Nothing of a request whose load failed is stored.
    for c in chunks[4:]:
        assert engine.worker._cache.lookup(ns, [c.key]).matched == 0
    assert engine.worker.stats()["saved_chunks"] == saved
    assert engine.worker.stats()["save_errors"] == 3


def test_tensor_parallel_ranks_agree_on_load_failures(extra):
    ranks = [Engine(dict(extra, tp_rank=r), tp_size=2) for r in range(2)]
    for e in ranks:
        e.run(Request(PREFIX + [1]))
    # No load fails: chunks 4-6 are saved in the loading step.
    assert ranks[0].run(Request(PREFIX + [5] * 20)).saves_per_step == [3, 0]
    # Another rank's load fails (this rank's succeed): the step's KV is wrong
    # here too, so nothing of the request is stored.
    ranks[0].worker._all_ranks_max = lambda flags: [1] * len(flags)
    req = Request(PREFIX + [6] * 20)
    rec = ranks[0].run(req, step_tokens=8)
    assert rec.ext == 32 and rec.errors == set()
    ns = ranks[0].worker._namespace("", 0)
    for c in ns.chunks_from_engine_hashes(req.block_hashes)[4:]:
        assert ranks[0].worker._cache.lookup(ns, [c.key]).matched == 0


def test_token_id_keys_name_the_lora_adapter_and_skip_multimodal(extra):
    engine = Engine(dict(extra, key_source="token_ids"))

    def request(tail, lora=None, **attrs):
        r = Request(PREFIX + tail)
        if lora is not None:
            r.lora_request = types.SimpleNamespace(lora_name=lora, lora_int_id=len(lora))
        for k, v in attrs.items():
            setattr(r, k, v)
        return r

    engine.run(request([3], lora="adapter-a"))
    assert engine.run(request([4], lora="adapter-b")).ext == 0
    assert engine.run(request([4])).ext == 0  # the base model
    assert engine.run(request([4], lora="adapter-a")).ext == 32
    # A request's cache salt cannot name an adapter's namespace.
    assert engine.run(request([4], cache_salt="lora:adapter-a")).ext == 0
    # An image behind placeholder tokens: never looked up (the base model's
    # chunks of PREFIX are cached) nor saved.
    engine.run(request([9], mm_features=[object()]))
    rec = engine.run(request([9, 9], mm_features=[object()]))
    assert rec.ext == 0 and sum(rec.saves_per_step) == 0
    assert engine.run(request([7], prompt_embeds=object())).ext == 0
    assert engine.scheduler.stats()["uncacheable_requests"] == 3


def test_layerwise_load_asks_for_piecewise_cuda_graphs():
    assert KVTierConnector.requires_piecewise_for_cudagraph({"layerwise_load": True}) is True
    assert KVTierConnector.requires_piecewise_for_cudagraph({"layerwise_load": "false"}) is False
    assert KVTierConnector.requires_piecewise_for_cudagraph({}) is False


def test_unset_hash_seed_is_reported_in_daemon_mode(extra, monkeypatch, caplog):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    with caplog.at_level("WARNING", logger="kvtier.vllm"):
        Engine(extra)
    warned = any("PYTHONHASHSEED" in r.getMessage() for r in caplog.records)
    assert warned == (extra["mode"] == "daemon")
    caplog.clear()
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    with caplog.at_level("WARNING", logger="kvtier.vllm"):
        Engine(extra)
    assert not any("PYTHONHASHSEED" in r.getMessage() for r in caplog.records)


def test_bad_extra_config_names_the_key():
    with pytest.raises(ValueError, match="kv_connector_extra_config.mode"):
        Engine({"mode": "sideways"})
    with pytest.raises(ValueError, match="kv_connector_extra_config.no_such_key"):
        Engine({"no_such_key": 1})


def test_daemon_token_from_a_file(start_kvtierd, tmp_path, caplog, monkeypatch):
    """kvtierd with a token: the connector reads it from token_file (a
    mounted Secret) and saves and loads as with no token."""
    monkeypatch.delenv("KVTIER_TOKEN", raising=False)
    monkeypatch.delenv("KVTIER_TOKEN_FILE", raising=False)
    token = "connector-admin-token-0123456789"
    (tmp_path / "admin.token").write_text(token + "\n")
    daemon = start_kvtierd(["--admin-token-file", str(tmp_path / "admin.token")])
    extra = {"mode": "daemon", "socket_path": daemon.socket_path}
    # No token: every call is refused, so nothing is saved or found (the
    # engine prefills as without a cache) and the log says why.
    plain = Engine(extra)
    plain.run(Request(PREFIX + [1, 2, 3, 4, 5]))
    assert plain.run(Request(PREFIX + [9, 9, 9, 9, 9, 9, 9])).ext == 0
    assert "needs a bearer token" in caplog.text
    (tmp_path / "engine.token").write_text(token + "\n")
    engine = Engine(dict(extra, token_file=str(tmp_path / "engine.token")))
    engine.run(Request(PREFIX + [1, 2, 3, 4, 5]))
    rec = engine.run(Request(PREFIX + [9, 9, 9, 9, 9, 9, 9]))
    assert rec.ext == 32
    assert engine.worker.stats()["loaded_tokens"] == 32
    with pytest.raises(ValueError, match="token or token_file"):
        Engine(dict(extra, token=token, token_file=str(tmp_path / "engine.token")))
    # The environment names the file when the configuration names nothing;
    # the configuration wins over it.
    monkeypatch.setenv("KVTIER_TOKEN_FILE", str(tmp_path / "engine.token"))
    assert Engine(extra).run(Request(PREFIX + [7, 7, 7, 7, 7, 7, 7])).ext == 32
    monkeypatch.setenv("KVTIER_TOKEN", "not-the-token-0123456789")
    with pytest.raises(ValueError, match="KVTIER_TOKEN or"):
        Engine(extra)
    assert Engine(dict(extra, token=token)).run(Request(PREFIX + [6, 6, 6, 6, 6, 6, 6])).ext == 32
