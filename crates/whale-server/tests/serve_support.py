"""Shared by e2e_openai.py and load_test.py: start and stop `whale serve`, and give a
tokenizer-less model folder a tiny byte-level tokenizer so chat can be tested on it.

Standard library only, so it runs before anything is installed."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

# Fixture models use id 0 for BOS and 1 for EOS; the byte tokens follow them.
BOS_ID, EOS_ID, FIRST_BYTE_ID = 0, 1, 2
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ m['content'] }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜>{% endif %}"
)


def byte_chars():
    """GPT-2's byte-to-character map (the alphabet of byte-level BPE vocabularies)."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = 0
    out = []
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            extra += 1
            out.append(chr(255 + extra))
    return out


def add_byte_tokenizer(model_dir):
    """Writes tokenizer.json (one token per byte, no merges) and tokenizer_config.json
    (BOS/EOS and a DeepSeek-like chat template) into `model_dir`."""
    vocab = {c: FIRST_BYTE_ID + i for i, c in enumerate(byte_chars())}

    def special(i, content):
        return {"id": i, "content": content, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False, "special": True}

    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [special(BOS_ID, BOS), special(EOS_ID, EOS)],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }
    with open(os.path.join(model_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False)
    config = {"bos_token": BOS, "eos_token": EOS, "add_bos_token": True, "add_eos_token": False,
              "chat_template": CHAT_TEMPLATE}
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False)


def prepare_model(model_dir, workdir):
    """The folder to serve: `model_dir` itself if it has a tokenizer, else a copy with the
    byte-level tokenizer added (fixture models ship none)."""
    if os.path.exists(os.path.join(model_dir, "tokenizer.json")):
        return model_dir
    with open(os.path.join(model_dir, "config.json")) as f:
        vocab_size = json.load(f)["vocab_size"]
    if vocab_size < FIRST_BYTE_ID + 256:
        raise SystemExit(f"{model_dir}: vocab_size {vocab_size} is too small for the byte tokenizer "
                         f"(needs {FIRST_BYTE_ID + 256}); pick another model")
    copy = os.path.join(workdir, os.path.basename(os.path.normpath(model_dir)))
    shutil.copytree(model_dir, copy)
    add_byte_tokenizer(copy)
    return copy


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid):
    """Resident memory of a process in MiB (Linux), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    """`whale serve` on a free port; stopped with SIGTERM on exit, which must end it with
    status 0 (graceful shutdown)."""

    def __init__(self, whale, model, *extra, ctx=4096, log=None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.cmd = [whale, "serve", "--model", model, "--port", str(self.port), "--ctx", str(ctx), *extra]
        # A log of our own is removed after a clean stop; kept (and named in the error) otherwise.
        self.own_log = log is None
        self.log = log or tempfile.NamedTemporaryFile(prefix="whale-serve-", suffix=".log", delete=False).name
        self.proc = None

    def __enter__(self):
        self.log_file = open(self.log, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"whale serve exited with {self.proc.returncode}; log: {self.log}\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"whale serve did not become healthy; log: {self.log}\n{self.tail()}")

    def stop(self, timeout=60):
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __exit__(self, *exc):
        code = self.stop()
        self.log_file.close()
        if exc[0] is None and code != 0:
            raise RuntimeError(f"whale serve exited with {code} after SIGTERM; log: {self.log}\n{self.tail()}")
        if exc[0] is None and self.own_log:
            os.unlink(self.log)

    def tail(self, n=30):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def metrics(self):
        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as r:
            out = {}
            for line in r.read().decode().splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    out[name] = float(value)
            return out
