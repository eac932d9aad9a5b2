"""Byte-level BPE trained with `tokenizers`, saved and loaded as tokenizer.json."""

from envfactory.model.data import corpus_files, read_texts
from envfactory.model.tokenizer import BOS, EOS, SPECIAL_TOKENS, Tokenizer, main, train_bpe

TEXT = ["def add(a, b):\n    return a + b\n" * 20, "class Point:\n    x: int = 0\n" * 20]


def test_train_round_trip_and_specials(tmp_path):
    tok = train_bpe(TEXT, vocab_size=300)
    assert 256 + len(SPECIAL_TOKENS) <= tok.vocab_size <= 300
    for s in ["def add(a, b): return a", "naïve 数据 ✓ \x00\t", ""]:
        assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode("    return a + b")) < len("    return a + b")  # merges were learned
    ids = tok.encode(f"{BOS}hi{EOS}")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.encode("x", bos=True, eos=True) == [tok.bos_id] + tok.encode("x") + [tok.eos_id]
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.from_file(tmp_path)  # a directory holding tokenizer.json, as HF repos do
    assert again.encode("class Point: pass") == tok.encode("class Point: pass")


def test_cli_trains_on_a_local_corpus(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.py").write_text(TEXT[0])
    (src / "b.txt").write_text(TEXT[1])
    assert main(["train", "--corpus", str(src), "--vocab-size", "280", "--out", str(tmp_path / "t.json")]) == 0
    assert Tokenizer.from_file(tmp_path / "t.json").vocab_size <= 280
    assert main(["train", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "x.json")]) == 1


def test_stdlib_corpus_is_found():
    files = corpus_files("stdlib")
    assert len(files) > 500 and all(f.suffix == ".py" for f in files)
    assert "import" in next(read_texts(files, 1))


def deepseek_style_tokenizer_json(path):
    """A small tokenizer.json laid out as DeepSeek-V3.x ships it: BOS/EOS/pad at ids 0-2 in
    the BPE vocab, chat tokens as added tokens at high ids, a Sequence pre-tokenizer (regex
    splits, then byte-level without its own regex), a byte-level decoder and a post-processor
    that prepends BOS when special tokens are requested."""
    import json

    from tokenizers import pre_tokenizers

    specials = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(ch, len(vocab))
    merges = [["d", "e"], ["de", "f"], ["Ġ", "f"], ["r", "e"], ["re", "t"]]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    n = len(vocab)  # added tokens follow the BPE vocab, placeholders first (as in V3.x)
    chat = {"<｜place▁holder▁no▁0｜>": n, "<｜place▁holder▁no▁1｜>": n + 1, "<｜User｜>": n + 2,
            "<｜Assistant｜>": n + 3, "<think>": n + 4, "</think>": n + 5}
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for s, i in [*((s, vocab[s]) for s in specials), *chat.items()]]
    split = lambda rx: {"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated", "invert": False}
    doc = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split(r"\p{N}{1,3}"),
            split(r"[一-龥\u3040-ゟ゠-ヿ]+"),
            split(r"[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": specials[0], "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": specials[0], "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {specials[0]: {"id": specials[0], "ids": [0], "tokens": [specials[0]]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }
    path.write_text(json.dumps(doc, ensure_ascii=False))
    return vocab, chat


def test_a_deepseek_layout_tokenizer_json_loads(tmp_path):
    vocab, chat = deepseek_style_tokenizer_json(tmp_path / "tokenizer.json")
    tok = Tokenizer.from_file(tmp_path)
    assert (tok.bos_id, tok.eos_id) == (0, 1)
    assert tok.vocab_size == len(vocab) + len(chat) == max(chat.values()) + 1
    assert tok.encode("def ret") == [vocab["def"], vocab["Ġ"], vocab["ret"]]
    ids = tok.encode("<｜User｜>def<｜Assistant｜><think>", bos=True, eos=True)
    assert ids == [0, chat["<｜User｜>"], vocab["def"], chat["<｜Assistant｜>"], chat["<think>"], 1]
    for s in ["def f(x):\n    return 12345 + x", "naïve 数据 ✓ ひらがな"]:
        assert tok.decode(tok.encode(s)) == s
