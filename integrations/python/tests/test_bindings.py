"""The kvtier module against the real embedded cache, keys and CPU data path."""

import ctypes
import os
import subprocess
import sys
import time

import pytest
import torch

import kvtier

BLOCK = 4
TPC = 8


def make_ns(**kw):
    args = dict(
        model="test/model",
        num_layers=3,
        num_kv_heads=2,
        head_size=8,
        dtype="float16",
        tokens_per_block=BLOCK,
        tokens_per_chunk=TPC,
    )
    args.update(kw)
    return kvtier.make_namespace(**args)


def small_cache():
    o = kvtier.CacheOptions()
    o.dram_capacity_bytes = 16 << 20
    o.slab_bytes = 2 << 20
    o.huge_pages = False
    return kvtier.Cache.create(o)


def test_import_does_not_need_torch():
    code = "import sys, kvtier; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_keys_chain_and_namespaces():
    ns = make_ns()
    tokens = list(range(100, 124))
    keys = ns.block_keys(tokens)
    assert len(keys) == 6
    assert keys[0] == kvtier.hash_block(ns.id, kvtier.BlockKey(), tokens[:4])
    assert keys[1] == kvtier.hash_block(ns.id, keys[0], tokens[4:8])
    assert kvtier.BlockKey.from_hex(keys[2].hex()) == keys[2]
    chunks = ns.chunks(tokens)
    assert [c.first_token for c in chunks] == [0, 8, 16]
    assert [c.key for c in chunks] == [keys[1], keys[3], keys[5]]
    assert chunks[1].parent == chunks[0].key
    # A trailing partial block has no key; include_partial keeps short chunks.
    assert len(ns.chunks(tokens + [1, 2])) == 3
    assert [c.num_tokens for c in ns.chunks(tokens[:12], include_partial=True)] == [8, 4]
    # Every namespace field changes the keys.
    for other in (
        make_ns(cache_salt="tenant-b"),
        make_ns(tp_rank=1, tp_size=2),
        make_ns(dtype="bfloat16"),
        make_ns(model="other/model"),
    ):
        assert other.id != ns.id
        assert other.chunks(tokens)[0].key != chunks[0].key


def test_engine_hash_chunks():
    ns = make_ns()
    hashes = [bytes([i]) * 32 for i in range(6)]
    chunks = ns.chunks_from_engine_hashes(hashes)
    assert len(chunks) == 3
    assert chunks[0].key == kvtier.key_from_engine_hash(ns.id, hashes[1])
    salted = make_ns(cache_salt="s")
    assert salted.chunks_from_engine_hashes(hashes)[0].key != chunks[0].key


def test_bad_input_names_the_field():
    with pytest.raises(kvtier.InvalidArgumentError, match="tokens_per_chunk"):
        make_ns(tokens_per_chunk=6)
    with pytest.raises(ValueError, match=r"tokens\[1\]"):
        make_ns().chunks([1, -5])
    with pytest.raises(kvtier.InvalidArgumentError) as e:
        kvtier.parse_dtype("float99")
    assert e.value.code == "INVALID_ARGUMENT"


def test_cache_save_lookup_load_remove_stats():
    ns = make_ns()
    cache = small_cache()
    chunks = ns.chunks(list(range(32)))
    size = ns.payload_bytes(TPC)
    for i, c in enumerate(chunks):
        cache.save(ns, c, bytes([i + 1]) * size)
    assert cache.lookup(ns, kvtier.Namespace.keys(chunks)).matched == 4
    assert cache.lookup(make_ns(cache_salt="x"), kvtier.Namespace.keys(chunks)).matched == 0
    out = kvtier.HostBuffer(size)
    assert cache.load(ns, chunks[2].key, out) == size
    assert bytes(out) == bytes([3]) * size
    with pytest.raises(kvtier.InvalidArgumentError, match="payload"):
        cache.save(ns, chunks[0], b"short")
    assert cache.remove(ns, chunks[2].key) == 2
    with pytest.raises(kvtier.NotFoundError):
        cache.load(ns, chunks[3].key, out)
    stats = cache.stats()
    dram = stats["tiers"][0]
    assert dram["tier"] == "dram" and dram["saves"] == 4 and dram["chunks"] == 2
    assert stats["lookups"] == 2 and stats["lookup_hits"] == 4


def test_damaged_header_is_data_loss_and_dropped():
    ns = make_ns()
    cache = small_cache()
    chunk = ns.chunks(list(range(8)))[0]
    cache.save(ns, chunk, bytes(ns.payload_bytes(TPC)))
    with cache.pin(ns, chunk.key) as pin:
        assert pin.nbytes == ns.payload_bytes(TPC)
        # The 64-byte chunk header sits right before the payload; damage it.
        ctypes.memset(pin.address - 64, 0xA5, 8)
    out = kvtier.HostBuffer(ns.payload_bytes(TPC))
    with pytest.raises(kvtier.DataLossError):
        cache.load(ns, chunk.key, out)
    assert cache.lookup(ns, [chunk.key]).matched == 0
    assert cache.stats()["tiers"][0]["corrupt_chunks"] == 1


def flash_tensors(num_layers, num_blocks, dtype=torch.float16, hnd=False):
    out = []
    for _ in range(num_layers):
        if hnd:
            t = torch.zeros(2, num_blocks, 2, BLOCK, 8, dtype=dtype).permute(0, 1, 3, 2, 4)
        else:
            t = torch.zeros(2, num_blocks, BLOCK, 2, 8, dtype=dtype)
        out.append(t)
    return out


@pytest.mark.parametrize("hnd", [False, True])
def test_gather_scatter_round_trip_on_torch_tensors(hnd):
    src = flash_tensors(3, 10, hnd=hnd)
    for i, t in enumerate(src):
        t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(i)))
    dst = flash_tensors(3, 10, hnd=hnd)
    runtime = kvtier.DeviceRuntime.create("cpu")
    assert runtime.name == "cpu" and not runtime.is_gpu
    src_copier = runtime.create_kv_copier(kvtier.vllm_flash_layout(src))
    dst_copier = runtime.create_kv_copier(kvtier.vllm_flash_layout(dst))
    ns = make_ns()
    src_copier.layout.check_compatible(ns)
    payload = runtime.alloc_pinned(ns.payload_bytes(TPC))
    src_copier.gather([([7, 2], TPC, payload)])
    # Layer-major payload: layer 0's K for token 0 comes first.
    first = torch.frombuffer(bytearray(bytes(payload)[:32]), dtype=torch.float16)
    assert torch.equal(first, src[0][0, 7, 0, :, :].reshape(-1))
    for layer in range(3):
        dst_copier.scatter_layer(layer, [([1, 4], TPC, payload)])
    for s, d in zip(src, dst):
        assert torch.equal(d[:, 1], s[:, 7]) and torch.equal(d[:, 4], s[:, 2])
        assert torch.count_nonzero(d[:, [0, 2, 3, 5, 6, 7, 8, 9]]) == 0
    with pytest.raises(kvtier.InvalidArgumentError, match="block"):
        dst_copier.scatter([([1, 99], TPC, payload)])


def test_layout_mismatch_is_refused():
    layout = kvtier.vllm_flash_layout(flash_tensors(3, 4, dtype=torch.bfloat16))
    with pytest.raises(kvtier.InvalidArgumentError, match="dtype"):
        layout.check_compatible(make_ns())


@pytest.fixture(params=["embedded", "daemon-shm", "daemon-copy"])
def any_cache(request):
    """(mode, cache): the embedded cache, or kvtierd with and without the arena."""
    if request.param == "embedded":
        return request.param, small_cache()
    daemon = request.getfixturevalue("kvtierd")
    options = kvtier.ClientOptions()
    options.socket_path = daemon.socket_path
    options.shared_memory = request.param == "daemon-shm"
    return request.param, kvtier.Client.create(options)


def test_payload_view_outlives_release_and_holds_the_pin(any_cache):
    mode, cache = any_cache
    ns = make_ns()
    a = ns.chunks(list(range(8)))[0]
    b = ns.chunks(list(range(100, 108)))[0]
    size = ns.payload_bytes(TPC)
    a_bytes = bytes(i % 251 for i in range(size))
    b_bytes = bytes([0xEE]) * size
    cache.save(ns, a, a_bytes)
    with cache.pin(ns, a.key) as p:
        view = p.payload
        part = memoryview(view)[16:48]
        assert view.readonly and bytes(view) == a_bytes
    assert not p.valid and p.nbytes == 0
    with pytest.raises(kvtier.FailedPreconditionError, match="released"):
        p.payload
    p.release()  # twice is fine
    del p
    # The views still hold the pin: removing skips the pinned chunk, so B
    # cannot take its slot (without the arena the pin is a copy the views keep).
    try:
        removed = cache.remove(ns, a.key)
    except kvtier.NotFoundError:  # the daemon: "not cached (or pinned)"
        removed = 0
    cache.save(ns, b, b_bytes)
    other = cache.pin(ns, b.key)  # without the arena: a fresh copy of B's size
    assert bytes(other.payload) == b_bytes
    assert bytes(view) == a_bytes
    assert bytes(part) == a_bytes[16:48]
    other.release()
    if mode != "daemon-copy":
        assert removed == 0
    # The last view gone, the pin is released (kvtierd applies a release
    # shortly after it is sent).
    del view, part
    deadline = time.monotonic() + 10
    while removed == 0:
        try:
            removed = cache.remove(ns, a.key)
        except kvtier.NotFoundError:
            pass
        assert removed == 1 or time.monotonic() < deadline
        time.sleep(0.01)


def test_transfer_payloads_from_a_generator_are_held():
    src = flash_tensors(3, 10)
    for i, t in enumerate(src):
        t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(10 + i)))
    runtime = kvtier.DeviceRuntime.create("cpu")
    copier = runtime.create_kv_copier(kvtier.vllm_flash_layout(src))
    size = make_ns().payload_bytes(TPC)
    pairs = [([7, 2], [1, 4]), ([3, 5], [0, 8]), ([9, 6], [2, 3])]
    payloads = []
    for src_ids, _ in pairs:
        buf = kvtier.HostBuffer(size)
        copier.gather([(src_ids, TPC, buf)])
        payloads.append(bytes(buf))
    assert len(set(payloads)) == 3

    # Each HostBuffer's only reference is the tuple the generator yields.
    copier.gather(((ids, TPC, kvtier.HostBuffer(size)) for ids, _ in pairs))

    def filled(data):
        buf = kvtier.HostBuffer(size)
        memoryview(buf)[:] = data
        return buf

    by_list = flash_tensors(3, 10)
    list_copier = runtime.create_kv_copier(kvtier.vllm_flash_layout(by_list))
    list_copier.scatter([(dst, TPC, filled(p)) for (_, dst), p in zip(pairs, payloads)])
    by_generator = flash_tensors(3, 10)
    gen_copier = runtime.create_kv_copier(kvtier.vllm_flash_layout(by_generator))
    gen_copier.scatter((dst, TPC, filled(p)) for (_, dst), p in zip(pairs, payloads))
    for s, d_list, d_gen in zip(src, by_list, by_generator):
        for src_ids, dst_ids in pairs:
            assert torch.equal(d_list[:, dst_ids], s[:, src_ids])
        assert torch.equal(d_gen, d_list)


def test_token_file_is_read_again_while_the_client_runs(tmp_path, start_kvtierd):
    """A token replaced in three steps on both sides (kvtierd's admin token
    file, the client's token_file) while both run: no call is refused."""
    old, new = "py-admin-token-old-0123456789", "py-admin-token-new-0123456789"

    def replace(path, text):  # by rename, as the kubelet updates a Secret
        path.with_suffix(".next").write_text(text)
        os.rename(path.with_suffix(".next"), path)

    daemon_tokens = tmp_path / "admin.token"
    client_tokens = tmp_path / "client.token"
    replace(daemon_tokens, old)
    replace(client_tokens, old)
    config = tmp_path / "kvtierd.yaml"
    config.write_text(f"tls:\n  reload_seconds: 1\nauth:\n  admin_token_file: {daemon_tokens}\n")
    daemon = start_kvtierd(["--config", str(config)])
    options = kvtier.ClientOptions()
    options.socket_path = daemon.socket_path
    options.shared_memory = False
    options.token_file = str(client_tokens)
    options.token_reload_ms = 100
    client = kvtier.Client.create(options)

    def calls_for(seconds):  # every call in the window must succeed
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            client.fetch_stats()
            time.sleep(0.05)

    def with_token(token):
        o = kvtier.ClientOptions()
        o.socket_path = daemon.socket_path
        o.shared_memory = False
        o.token = token
        return kvtier.Client.create(o)

    calls_for(0.3)
    replace(daemon_tokens, f"{old}\n{new}\n")
    calls_for(3.5)  # kvtierd reads its file every second
    replace(client_tokens, f"{new}\n{old}\n")
    calls_for(0.5)
    replace(daemon_tokens, new)
    calls_for(3.5)
    with pytest.raises(kvtier.PermissionDeniedError):
        with_token(old).fetch_stats()
    client.fetch_stats()

    bad = kvtier.ClientOptions()
    bad.socket_path = daemon.socket_path
    bad.token_file = str(tmp_path / "missing.token")
    with pytest.raises(kvtier.InvalidArgumentError, match="token_file: cannot read"):
        kvtier.Client.create(bad)
    bad.token = old
    with pytest.raises(kvtier.InvalidArgumentError, match="token, token_file: set one"):
        bad.validate()
