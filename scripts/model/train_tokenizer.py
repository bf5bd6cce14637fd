#!/usr/bin/env python3
"""Train whale-tiny's byte-level BPE tokenizer (vocab 8000 incl. DeepSeek special tokens).

usage: train_tokenizer.py [--data-dir /work/train-data] [--out /work/train-data/tokenizer]
Writes tokenizer.json and tokenizer_config.json (DeepSeek-V3 style chat template) to --out.
"""
import argparse, json, os
os.environ.setdefault("RAYON_NUM_THREADS", "1")
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
SPECIAL = [BOS, EOS, USER, ASSISTANT]
VOCAB = 8000

# DeepSeek-V3's chat template, reduced to what matters (system prompt, user/assistant turns,
# generation prompt); same token layout as the hub's template.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{%- endif %}{%- endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="/work/train-data")
    ap.add_argument("--out", default="/work/train-data/tokenizer")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([os.path.join(a.data_dir, "train.txt")], trainer)
    assert [tok.token_to_id(t) for t in SPECIAL] == [0, 1, 2, 3]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)])
    tok.save(os.path.join(a.out, "tokenizer.json"))
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, t in enumerate(SPECIAL)}
    cfg = {
        "add_bos_token": True, "add_eos_token": False,
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": None,
        "clean_up_tokenization_spaces": False, "legacy": True,
        "model_max_length": 4096, "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added, "chat_template": CHAT_TEMPLATE,
    }
    json.dump(cfg, open(os.path.join(a.out, "tokenizer_config.json"), "w"), indent=2, ensure_ascii=False)
    # checks
    t2 = Tokenizer.from_file(os.path.join(a.out, "tokenizer.json"))
    for s in ["Call me Ishmael.  Some years ago--never mind how long", "naïve café — “quotes” 日本 🐋\n\n  x"]:
        e = t2.encode(s)
        assert e.ids[0] == 0, e.ids
        assert t2.decode(e.ids, skip_special_tokens=True) == s, (t2.decode(e.ids), s)
    print("vocab", t2.get_vocab_size(), "sample:", t2.encode("It was the best of times.").tokens)


if __name__ == "__main__":
    main()
