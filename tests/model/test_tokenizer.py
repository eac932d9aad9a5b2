"""Byte-level BPE trained with `tokenizers`, saved and loaded as tokenizer.json."""

from model.data import corpus_files, read_texts
from model.tokenizer import BOS, EOS, SPECIAL_TOKENS, Tokenizer, main, train_bpe

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
