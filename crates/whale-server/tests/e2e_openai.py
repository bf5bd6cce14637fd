#!/usr/bin/env python3
"""End to end: start `whale serve` on a model and drive it with the official `openai`
Python client as an application would: models, chat (streamed and not), completions
(text and token ids), usage with the prefix cache, the client's error classes for
400/401/429, the disk cache across a restart, and exit status 0 on SIGTERM.

Usage: e2e_openai.py --whale target/release/whale --model fixtures/models/v2_grouped_bf16_sharded
(scripts/serve_e2e.sh sets this up). Prints one line per check and a summary of time to
first token: cold, cached in memory, and after a restart with --cache-dir."""

import argparse
import os
import random
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

import openai
from openai import OpenAI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_support import Server, prepare_model  # noqa: E402

FAILURES = []


def check(name, fn, *args):
    try:
        fn(*args)
        print(f"ok    {name}", flush=True)
    except Exception:  # noqa: BLE001 - report every failure, keep going
        FAILURES.append(name)
        print(f"FAIL  {name}\n{traceback.format_exc()}", flush=True)


def client(server, key="none"):
    # No retries: 429s must surface as RateLimitError, not be retried away.
    return OpenAI(base_url=server.base + "/v1", api_key=key, max_retries=0, timeout=120)


def expect_error(cls, fn):
    try:
        fn()
    except cls as e:
        return e
    raise AssertionError(f"expected {cls.__name__}")


MESSAGES = [
    {"role": "system", "content": "You are a terse assistant who knows the sea. " * 40},
    {"role": "user", "content": "Say something about whales."},
]


def test_models(c):
    models = c.models.list().data
    assert len(models) == 1 and models[0].object == "model", models
    assert c.models.retrieve(models[0].id).id == models[0].id


def test_chat(c):
    model = c.models.list().data[0].id
    r = c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16, temperature=0)
    assert r.object == "chat.completion"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 200 and 1 <= u.completion_tokens <= 16, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    extra = u.model_extra
    assert extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == u.prompt_tokens
    # The same conversation again: its prefix comes from the cache.
    again = c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens == (u.prompt_tokens - 1) // 64 * 64, again.usage
    assert again.choices[0].message.content == choice.message.content


def test_chat_stream(c):
    model = c.models.list().data[0].id
    full = c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16, temperature=0)
    stream = c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content, (text, full.choices[0].message.content)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].choices == []


def test_chat_logprobs_stop_seed(c):
    model = c.models.list().data[0].id
    r = c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, temperature=0,
                                  logprobs=True, top_logprobs=2)
    items = r.choices[0].logprobs.content
    assert len(items) == r.usage.completion_tokens and all(len(i.top_logprobs) == 2 for i in items)
    kw = dict(model=model, messages=MESSAGES, max_tokens=12, temperature=0.9, top_p=0.95, seed=42,
              frequency_penalty=0.5, presence_penalty=0.2)
    a = c.chat.completions.create(**kw).choices[0].message.content
    b = c.chat.completions.create(**kw).choices[0].message.content
    assert a == b, "same seed, same text"
    r = c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=30, temperature=0)
    text = r.choices[0].message.content
    visible = [i for i in range(1, len(text) - 1) if text[i].isprintable() and text[i] != "\ufffd"]
    if visible:
        stop = text[visible[len(visible) // 2]]
        s = c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=30, temperature=0, stop=[stop])
        assert s.choices[0].message.content == text[: text.index(stop)]
        assert s.choices[0].finish_reason == "stop"


def test_completions(c):
    model = c.models.list().data[0].id
    r = c.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and isinstance(r.choices[0].text, str)
    assert r.usage.completion_tokens <= 8
    chunks = list(c.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0,
                                       stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == r.choices[0].text
    # Token ids as the prompt, as OpenAI's API allows.
    r = c.completions.create(model=model, prompt=[5, 6, 7, 8], max_tokens=4, temperature=0, logprobs=2)
    assert r.usage.prompt_tokens == 4 and len(r.choices[0].logprobs.token_logprobs) == r.usage.completion_tokens


def test_bad_requests(c):
    model = c.models.list().data[0].id
    for kw in (dict(max_tokens=0), dict(n=2), dict(max_tokens=10**7), dict(temperature=5),
               dict(extra_body={"top_p": "high"})):
        e = expect_error(openai.BadRequestError,
                         lambda: c.chat.completions.create(model=model, messages=MESSAGES, **kw))
        assert e.status_code == 400 and e.body["type"] == "invalid_request_error", e.body
    long = [{"role": "user", "content": "x" * 5000}]
    e = expect_error(openai.BadRequestError, lambda: c.chat.completions.create(model=model, messages=long))
    assert e.code == "context_length_exceeded", e.body
    expect_error(openai.NotFoundError, lambda: c.models.retrieve("no-such-model"))


def test_api_key(whale, model):
    with Server(whale, model, "--api-key", "s3cret") as s:
        e = expect_error(openai.AuthenticationError, lambda: client(s, "wrong").models.list())
        assert e.status_code == 401 and e.code == "invalid_api_key", e.body
        # No key at all (the client insists on one, so ask without it).
        try:
            urllib.request.urlopen(s.base + "/v1/models", timeout=10)
            raise AssertionError("no key accepted")
        except urllib.error.HTTPError as missing:
            assert missing.code == 401
        assert client(s, "s3cret").models.list().data


def test_rate_limit(whale, model):
    # One running slot and four queued: five long streams fill them, the sixth is refused.
    with Server(whale, model, "--max-seqs", "1", ctx=32768) as s:
        c = client(s)
        name = c.models.list().data[0].id
        streams = [c.completions.create(model=name, prompt=[5, 6, 7], max_tokens=30000, stream=True)
                   for _ in range(5)]
        e = expect_error(openai.RateLimitError,
                         lambda: c.completions.create(model=name, prompt=[5, 6, 7], max_tokens=4))
        assert e.status_code == 429 and e.response.headers.get("retry-after") == "1"
        for st in streams:  # disconnect: the server cancels them
            st.close()
        deadline = time.time() + 60
        while True:
            try:
                c.completions.create(model=name, prompt=[5, 6, 7], max_tokens=2)
                break
            except openai.RateLimitError:
                assert time.time() < deadline, "slots never freed after the clients left"
                time.sleep(0.1)
        assert s.metrics()["whale_requests_cancelled_total"] >= 5


def time_to_first_token(c, model, prompt):
    """Seconds from sending a streamed completion to its first token."""
    t0 = time.perf_counter()
    stream = c.completions.create(model=model, prompt=prompt, max_tokens=2, temperature=0, stream=True,
                                  extra_body={"return_token_ids": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].model_extra.get("token_ids"):
            ttft = time.perf_counter() - t0
            stream.close()
            return ttft
    raise AssertionError("no token")


def test_prefix_cache_on_disk(whale, model, prompt_tokens, results, serve_args):
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="whale-kv-") as cache_dir:
        with Server(whale, model, "--cache-dir", cache_dir, *serve_args, ctx=prompt_tokens + 64) as s:
            c = client(s)
            name = c.models.list().data[0].id
            vocab = 250
            prompt = [rng.randrange(2, vocab) for _ in range(prompt_tokens)]
            cold = time_to_first_token(c, name, prompt)
            warm = min(time_to_first_token(c, name, prompt) for _ in range(3))
            r = c.completions.create(model=name, prompt=prompt, max_tokens=1)
            assert r.usage.prompt_tokens_details.cached_tokens == (prompt_tokens - 1) // 64 * 64, r.usage
        # Restarted (the SIGTERM above flushed the cache to disk).
        with Server(whale, model, "--cache-dir", cache_dir, *serve_args, ctx=prompt_tokens + 64) as s:
            c = client(s)
            restart = time_to_first_token(c, name, prompt)
            r = c.completions.create(model=name, prompt=prompt, max_tokens=1)
            assert r.usage.prompt_tokens_details.cached_tokens == (prompt_tokens - 1) // 64 * 64, r.usage
            assert s.metrics()["whale_prefix_cache_disk_loads_total"] >= (prompt_tokens - 1) // 64
    results.update(cold=cold, warm=warm, restart=restart)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--whale", required=True, help="the whale binary")
    ap.add_argument("--model", required=True, help="model folder (a tokenizer is added to a copy if missing)")
    ap.add_argument("--prompt-tokens", type=int, default=2000, help="prompt length for the TTFT check")
    ap.add_argument("--ttft-only", action="store_true",
                    help="only the prefix-cache/TTFT check, on token ids (no tokenizer needed, no copy)")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `whale serve` argument (repeatable)")
    args = ap.parse_args()
    ttft = {}
    with tempfile.TemporaryDirectory(prefix="whale-e2e-") as work:
        model = args.model if args.ttft_only else prepare_model(args.model, work)
        print(f"model: {model}", flush=True)
        if not args.ttft_only:
            with Server(args.whale, model, "--max-seqs", "4") as s:
                c = client(s)
                check("models", test_models, c)
                check("chat", test_chat, c)
                check("chat streaming", test_chat_stream, c)
                check("chat logprobs, seed, stop", test_chat_logprobs_stop_seed, c)
                check("completions", test_completions, c)
                check("400s raise BadRequestError", test_bad_requests, c)
            check("401 raises AuthenticationError", test_api_key, args.whale, model)
            check("429 raises RateLimitError", test_rate_limit, args.whale, model)
        check("prefix cache on disk across a restart", test_prefix_cache_on_disk, args.whale, model,
              args.prompt_tokens, ttft, args.serve_arg)
    if ttft:
        print(f"time to first token, {args.prompt_tokens}-token prompt: cold {ttft['cold'] * 1000:.1f} ms, "
              f"cached in memory {ttft['warm'] * 1000:.1f} ms ({ttft['cold'] / ttft['warm']:.1f}x), "
              f"after restart from --cache-dir {ttft['restart'] * 1000:.1f} ms "
              f"({ttft['cold'] / ttft['restart']:.1f}x)")
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed: {', '.join(FAILURES)}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
