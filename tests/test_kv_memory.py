"""The KV memory manager: one budget in bytes or chunks, KV policies by name, int8 storage, what a run reports.

Every budgeted run here is checked on the store itself after every forward: the main context's tokens within the
token budget in every layer, everything held within the byte budget, the running byte count equal to a recount."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import flowcache_core.api as api
from flowcache_core.api import generate
from flowcache_core.cache.kv import KVStore
from flowcache_core.cache.kv_memory import parse_bytes
from flowcache_core.cache.kv_sink_window import SinkWindowConfig, SinkWindowKV
from flowcache_core.cache.registry import KV_POLICIES, KV_QUANTS
from flowcache_core.cache.settings import CacheConfig, resolve_cache
from flowcache_core.engine.events import ForwardEvent
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.magi1.bundle import load_bundle

PROMPT = "a red square moves left"
TPC = 4 * 8 * 8  # the tiny bundle: 4 latent frames of 8x8 tokens per chunk
WINDOW = 4


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir):
    """Every chunk may attend to all earlier ones: without a budget the store grows with the video."""
    b = load_bundle(tiny_bundle_dir)
    b.config = b.config.replace(noise2clean_kvrange=[])
    return b


def run_checked(b, cache: CacheConfig, monkeypatch, num_frames: int = 48, **kw):
    """generate() with the store captured and checked after every forward; returns (result, store, events)."""
    stores: list[KVStore] = []
    make_store = api.make_store
    monkeypatch.setattr(api, "make_store", lambda *a, **k: stores.append(make_store(*a, **k)) or stores[-1])
    events: list[ForwardEvent] = []

    def check(e):
        if not isinstance(e, ForwardEvent):
            return
        s = stores[0]
        events.append(e)
        assert e.kv_bytes == s.nbytes() == s.count_bytes()
        if s.budget_tokens is not None:
            assert all(s.tokens(KVStore.MAIN, layer) <= s.budget_tokens for layer in range(s.num_layers))
        if s.budget_bytes is not None:
            assert s.nbytes() <= s.peak_bytes <= s.budget_bytes

    r = generate(PROMPT, bundle=b, num_frames=num_frames, cache=cache, on_event=check, **kw)
    return r, stores[0], events


def bytes_for_chunks(chunks: float, quant: str, layers: int = 2, heads: int = 2, hd: int = 8, copies: int = WINDOW) -> int:
    """A byte budget that holds `chunks` chunks of the main context besides the text pass's window copies."""
    per_head = {"none": hd * 4, "int8": hd + 2}[quant]  # float32 tiny model; int8 codes + one bf16 scale
    per_token = 2 * heads * per_head * layers
    return int((copies + chunks) * TPC * per_token)


# ----------------------------------------------------------------------------- the budget is never exceeded
@pytest.mark.parametrize("quant", ["none", "int8"])
@pytest.mark.parametrize("kv_policy", list(KV_POLICIES))
@pytest.mark.parametrize("spelling", ["bytes", "chunks"])
def test_budget_never_exceeded_for_every_policy(bundle, monkeypatch, kv_policy, quant, spelling):
    budget = ({"kv_budget": bytes_for_chunks(6.5, quant)} if spelling == "bytes" else {"total_cache_chunk_nums": 6})
    r, store, events = run_checked(bundle, CacheConfig("none", kv_policy=kv_policy, kv_quant=quant, **budget),
                                   monkeypatch)
    assert r.record.compressions >= 5 and store.compressions == r.record.compressions
    unit = store.policy.unit(store.tokens_per_frame, TPC)
    if spelling == "bytes":
        assert store.budget_bytes == budget["kv_budget"]
        assert store.budget_tokens == 6.5 * TPC // unit * unit  # what the bytes hold, in whole units of the policy
        assert store.peak_bytes <= store.budget_bytes
    else:
        assert store.budget_tokens == 6 * TPC and store.budget_bytes is None
    assert max(r.record.kv_tokens) <= store.budget_tokens
    assert r.record.kv_peak_bytes == store.peak_bytes == max(e.kv_bytes for e in events) > 0
    assert [e.kv_budget_bytes for e in events] == [store.budget_bytes] * len(events)


@pytest.mark.parametrize("policy,kw,copies", [("none", dict(cfg_number=1), 0), ("flowcache", {}, WINDOW)])
def test_byte_budget_with_one_pass_and_with_step_caching(bundle, monkeypatch, policy, kw, copies):
    """One pass keeps no per-pass copies (the whole budget goes to the main context); a step-caching policy
    combines with the budget."""
    budget = bytes_for_chunks(5.25, "int8", copies=copies)
    r, store, _ = run_checked(bundle, CacheConfig(policy, kv_budget=budget, kv_quant="int8", compress_strategy="frame"),
                              monkeypatch, **kw)
    assert store.budget_tokens == 5 * TPC + 64  # 5.25 chunks in whole frames of 64 tokens
    assert r.record.compressions > 0 and store.peak_bytes <= budget


def test_byte_budget_rounds_to_the_policys_unit(bundle, monkeypatch):
    _, store, _ = run_checked(bundle, CacheConfig("none", kv_budget=bytes_for_chunks(6.5, "none"),
                                                  compress_strategy="chunk"), monkeypatch, num_frames=32)
    assert store.budget_tokens == 6 * TPC


def test_a_byte_budget_below_the_window_is_one_line(bundle):
    with pytest.raises(FlowcacheError) as e:
        generate(PROMPT, bundle=bundle, num_frames=24, cache=CacheConfig("none", kv_budget="300KiB"))
    msg = str(e.value)
    assert "\n" not in msg and "kv_budget='300KiB'" in msg and "window of 4 chunks" in msg
    assert f"at least {bytes_for_chunks(5, 'none')} bytes" in msg  # what it should have been, exactly


# ----------------------------------------------------------------------------- the policies
def test_sink_window_keeps_the_first_frames_and_the_newest():
    tpf, L = 4, 40  # 10 frames of 4 tokens, 2 KV heads
    positions = torch.arange(L)[:, None].expand(L, 2)
    keys = torch.randn(L, 2, 8)
    idx = SinkWindowKV(SinkWindowConfig(sink_frames=2)).select(keys, positions, None, tokens_per_frame=tpf,
                                                              tokens_per_chunk=16, keep=20)
    assert idx.shape == (2, 20)
    assert idx[0].tolist() == [*range(0, 8), *range(28, 40)]  # frames 0-1 (the sink), then the newest 3 frames
    assert torch.equal(idx[0], idx[1])
    plain = SinkWindowKV(SinkWindowConfig(sink_frames=0)).select(keys, positions, None, tokens_per_frame=tpf,
                                                                 tokens_per_chunk=16, keep=8)
    assert plain[0].tolist() == list(range(32, 40))


def test_sink_window_on_a_store_keeps_the_first_chunk_across_compressions(bundle, monkeypatch):
    r, store, _ = run_checked(bundle, CacheConfig("none", total_cache_chunk_nums=6, kv_policy="sink_window",
                                                  sink_frames=4), monkeypatch)
    block = store._compressed[0]
    assert set(block.origin_chunk[:, 0].tolist()) >= {0}  # the sink chunk survived every compression
    assert (block.positions[:TPC, 0] == torch.arange(TPC)).all()
    kept_after = block.positions[TPC:, 0]
    assert (kept_after.diff() == 1).all()  # then one run of the newest clean tokens
    assert not store.wants_queries  # it scores nothing, so forwards are not asked for queries


def test_live_line_with_bytes():
    from flowcache_cli.progress import kv_text

    assert kv_text(2816, 2816, 2_726_297, 3 << 20) == "KV 2.6 MiB/3.0 MiB, 87% (2.8k/2.8k tokens)"
    assert kv_text(1024, 1280, 512 << 10) == "KV 1.0k/1.3k tokens, 80%, 512.0 KiB"
    assert kv_text(1024, None, 512 << 10) == "KV 1.0k tokens, 512.0 KiB"


def test_policies_are_registered_by_name_and_get_flags():
    from flowcache_core.cache.settings import all_options

    assert list(KV_POLICIES) == ["flowcache", "sink_window"] and list(KV_QUANTS) == ["none", "int8"]
    opts = all_options()
    for name in ("kv_budget", "kv_policy", "kv_quant", "sink_frames", "total_cache_chunk_nums", "mix_lambda"):
        assert name in opts
    assert opts["kv_policy"].metadata["choices"] == ("flowcache", "sink_window")


# ----------------------------------------------------------------------------- one budget, resolved once
@pytest.mark.parametrize("text,n", [("8GiB", 8 << 30), ("512MiB", 512 << 20), ("1.5KiB", 1536), ("1000000", 10**6),
                                    (4096, 4096), ("2 MB", 2 * 10**6), ("64kib", 65536)])
def test_parse_bytes(text, n):
    assert parse_bytes("kv_budget", text) == n


@pytest.mark.parametrize("bad", ["8XB", "-1GiB", "0", 0, -5, "GiB", "1e9", True, 1.5, ""])
def test_bad_byte_budgets_are_one_line(bad):
    with pytest.raises(FlowcacheError) as e:
        CacheConfig("none", kv_budget=bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"kv_budget={bad!r} must be a size in bytes")


def test_one_budget_in_one_spelling():
    with pytest.raises(FlowcacheError, match=r"^total_cache_chunk_nums=6 and kv_budget='8GiB' are one KV budget"):
        CacheConfig("none", total_cache_chunk_nums=6, kv_budget="8GiB")
    with pytest.raises(FlowcacheError, match=r"^model: flowcache.cache_defaults: total_cache_chunk_nums=6 and"):
        resolve_cache(CacheConfig("none"), [("model", {"total_cache_chunk_nums": 6, "kv_budget": "1MiB"})])
    # a later layer's spelling replaces an earlier layer's other one
    r = resolve_cache(CacheConfig("none", kv_budget="8MiB"), [("model", {"total_cache_chunk_nums": 6})])
    assert (r.kv.total_cache_chunk_nums, r.memory.budget_bytes, r.budget_on) == (None, 8 << 20, True)
    r = resolve_cache(CacheConfig("none", total_cache_chunk_nums=7), [("file", {"kv_budget": "1GiB"})])
    assert (r.kv.total_cache_chunk_nums, r.memory.kv_budget) == (7, None)
    off = resolve_cache(CacheConfig("none", kv_quant="int8"))
    assert not off.budget_on and off.options() == {"total_cache_chunk_nums": None, "kv_quant": "int8"}


def test_an_option_of_another_kv_policy_is_an_error():
    with pytest.raises(FlowcacheError, match=r"^sink_frames applies to kv_policy sink_window, not 'flowcache'$"):
        resolve_cache(CacheConfig("none", sink_frames=2))
    with pytest.raises(FlowcacheError, match=r"^compress_strategy applies to kv_policy flowcache, not 'sink_window'$"):
        resolve_cache(CacheConfig("none", kv_policy="sink_window", compress_strategy="frame"))
    # in cache_defaults they are skipped, like another cache policy's options
    r = resolve_cache(CacheConfig("none", kv_policy="sink_window", total_cache_chunk_nums=6),
                      [("model", {"mix_lambda": 0.5, "sink_frames": 8})])
    assert r.kv_policy_config == SinkWindowConfig(8)
    assert "sink_window (sink_frames 8)" in r.describe()


def test_no_budget_and_no_quant_is_the_plain_store(bundle, monkeypatch):
    """The unbudgeted run stores what it is handed: the same video bit for bit with kv_quant none given or not."""
    free, store, _ = run_checked(bundle, CacheConfig("none"), monkeypatch, num_frames=24)
    again = generate(PROMPT, bundle=bundle, num_frames=24, cache=CacheConfig("none", kv_quant="none"))
    assert torch.equal(free.latents, again.latents)
    assert store.budget_tokens is None and store.budget_bytes is None and type(store.quant).__name__ == "NoQuant"
    assert free.record.peak_memory == (store.peak_bytes, "KV store peak")  # on the CPU: the store's peak


def test_int8_storage_without_a_budget(bundle, monkeypatch):
    free = generate(PROMPT, bundle=bundle, num_frames=24, cache=CacheConfig("none"))
    q8, store, _ = run_checked(bundle, CacheConfig("none", kv_quant="int8"), monkeypatch, num_frames=24)
    assert max(q8.record.kv_tokens) == max(free.record.kv_tokens)
    assert q8.record.kv_peak_bytes * 32 == free.record.kv_peak_bytes * 10  # head dim 8: 8 + 2 bytes against 8 * 4
    assert 0 < (q8.latents - free.latents).abs().max() < 0.1


# ----------------------------------------------------------------------------- the CLI
runner = CliRunner()


def cli(bundle_dir, tmp_path, *args):
    from flowcache_cli.main import app

    return runner.invoke(app, ["generate", "--checkpoint-dir", str(bundle_dir), "--prompt", PROMPT, "--output-path",
                               str(tmp_path / "out.mp4"), *[str(a) for a in args]])


@pytest.mark.parametrize("args,needle", [
    (["--kv-budget", "8XB"], "--kv-budget='8XB' must be a size in bytes"),
    (["--kv-budget", "0"], "--kv-budget='0' must be a size in bytes"),
    (["--kv-budget", "1MiB", "--total-cache-chunk-nums", "6"], "are one KV budget (chunks or bytes): give one"),
    (["--kv-budget", "100KiB"], "kv_budget='100KiB' holds 0.0 chunks"),
    (["--kv-policy", "lru"], "--kv-policy='lru' must be one of flowcache, sink_window"),
    (["--kv-quant", "int4"], "--kv-quant='int4' must be one of none, int8"),
    (["--sink-frames", "-1"], "--sink-frames=-1 must be an integer >= 0"),
    (["--sink-frames", "2", "--total-cache-chunk-nums", "6"], "sink_frames applies to kv_policy sink_window"),
])
def test_cli_budget_errors_are_one_line_exit_2(tiny_bundle_dir, tmp_path, args, needle):
    r = cli(tiny_bundle_dir, tmp_path, *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and r.output.strip().count("\n") == 0 and "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


def test_cli_json_log_reports_bytes_and_the_byte_budget(tiny_bundle_dir, tmp_path):
    log = tmp_path / "log.jsonl"
    budget = bytes_for_chunks(5.5, "int8")
    r = cli(tiny_bundle_dir, tmp_path, "--num-frames", 32, "--kv-budget", budget, "--kv-quant", "int8",
            "--kv-policy", "sink_window", "--json-log", log)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    kv = [row["kv"] for row in rows]
    assert all(set(k) == {"used", "budget", "bytes", "budget_bytes"} for k in kv)
    assert all(k["budget_bytes"] == budget and 0 < k["bytes"] <= budget for k in kv)
    assert all(k["budget"] == 5 * TPC + 128 and k["used"] <= k["budget"] for k in kv)  # 5.5 chunks in whole frames
    assert "KV memory" in r.stdout and "peak held by the KV store" in r.stdout and "stored as int8" in r.stdout
    assert "/" in r.stderr and "KiB, " in r.stderr  # the live line: `KV 190.0 KiB/212.5 KiB, 89% (1.2k/1.4k tokens)`


# ----------------------------------------------------------------------------- the bench's smoke mode
@pytest.mark.slow  # the shipped model, three short runs: about 9 s
def test_bench_kv_memory_tiny(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.kv_memory import main, parse_setting

    assert parse_setting("sink_window+int8@3MiB").cache() == CacheConfig("none", kv_quant="int8", kv_policy="sink_window",
                                                                         kv_budget="3MiB")
    assert parse_setting("int8").cache() == CacheConfig("none", kv_quant="int8")
    for bad in ("lru@3MiB", "flowcache", "@3MiB", "flowcache@3XB", "int8+flowcache@1MiB"):
        with pytest.raises(FlowcacheError):
            parse_setting(bad)
    out = tmp_path / "kv.json"
    assert main(["--tiny", "--no-lpips", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["reference"]["compressions"] == 0 and len(report["settings"]) == 2
    for row in report["settings"]:
        assert row["compressions"] >= 1 and row["max_kv_tokens"] <= row["budget_tokens"]
        assert len(row["psnr_per_chunk"]) == 6 and row["psnr_per_chunk"][0] == "inf"  # chunks before any compression
        assert row["kv_peak_bytes"] < report["reference"]["kv_peak_bytes"] and row["lpips"] is None
