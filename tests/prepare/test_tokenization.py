"""WordPiece via HF tokenizers against google-research/bert's own tokenizer tests, the fast path
against HF's whole pipeline on real Wikipedia text, vocab checks and vocab training."""

import json

import numpy as np
import pytest

from bert_pretrain.data.vocab import SPECIAL_TOKENS, check_pretraining_vocab, read_vocab, write_vocab
from bert_pretrain.errors import InputError
from bert_pretrain.prepare.text import split_sentences
from bert_pretrain.prepare.tokenization import WordPieceTokenizer, train_vocab


@pytest.fixture
def cases(shared_data):
    return json.loads((shared_data / "google_bert" / "tokenization_test_cases.json").read_text())


@pytest.fixture
def bert_vocab(shared_data):
    return shared_data / "vocab" / "bert-uncased-vocab.txt"


def toy(vocab, lower_case=True):
    return WordPieceTokenizer(vocab, lower_case)


def test_reference_test_cases(cases):
    """Every case of tokenization_test.py: FullTokenizer, BasicTokenizer, WordpieceTokenizer, ids."""
    checked = 0
    for case in cases["cases"]:
        kind = case.get("tokenizer") or case.get("function")
        if kind == "FullTokenizer":
            tokenizer = toy(case["vocab"], case["do_lower_case"])
            assert tokenizer.tokenize(case["input"]) == case["expected_tokens"]
            ids, lengths = tokenizer.encode_sentences([case["input"]])
            assert ids.tolist() == case["expected_ids"] and lengths.tolist() == [len(case["expected_ids"])]
        elif kind == "BasicTokenizer":
            tokenizer = toy(["[UNK]"], case["do_lower_case"])
            assert tokenizer.basic_tokens(case["input"]) == case["expected_tokens"]
        elif kind == "WordpieceTokenizer":
            tokenizer = toy(case["vocab"])
            # the reference's WordpieceTokenizer takes whitespace-separated, already-normalized words
            pieces = [p for word in case["input"].split() for p in tokenizer.wordpiece(word)]
            assert pieces == case["expected_tokens"]
        elif kind == "convert_tokens_to_ids":
            tokenizer = toy(case["vocab"])
            assert [tokenizer.ids[t] for t in case["input_tokens"]] == case["expected_ids"]
        else:
            raise AssertionError(f"unknown case {case}")
        checked += 1
    assert checked == len(cases["cases"]) == 9


def test_reference_character_classes(cases):
    """_is_whitespace splits words, _is_control characters vanish, _is_punctuation is a word of its own."""
    tokenizer = toy(["[UNK]"], lower_case=False)
    classes = cases["char_classes"]
    for char in classes["_is_whitespace"]["true"]:
        assert tokenizer.basic_tokens(f"a{char}b") == ["a", "b"], repr(char)
    for char in classes["_is_control"]["true"]:
        assert tokenizer.basic_tokens(f"a{char}b") == ["ab"], repr(char)
    for char in classes["_is_punctuation"]["true"]:
        assert tokenizer.basic_tokens(f"a{char}b") == ["a", char, "b"], repr(char)
    negatives = {*classes["_is_whitespace"]["false"], *classes["_is_control"]["false"], *classes["_is_punctuation"]["false"]}
    for char in negatives:
        if char in classes["_is_whitespace"]["true"]:
            expected = ["a", "b"]  # whitespace, not a control character: it splits, it is not dropped
        elif char in classes["_is_punctuation"]["true"]:
            expected = ["a", char, "b"]
        else:
            expected = [f"a{char}b"]  # neither: part of the word
        assert tokenizer.basic_tokens(f"a{char}b") == expected, repr(char)


def test_readme_examples_with_the_real_vocab(cases, bert_vocab):
    tokenizer = WordPieceTokenizer.from_vocab_file(bert_vocab)
    normalization, punctuation, wordpiece, full = cases["readme_examples"]
    assert " ".join(tokenizer.basic_tokens(normalization["input"])) == "john johanson ' s ,"
    assert tokenizer.basic_tokens(punctuation["input"]) == punctuation["expected_tokens"]
    assert tokenizer.tokenize(wordpiece["input"]) == wordpiece["expected_tokens"]
    words = [tokenizer.tokenize(w) for w in full["orig_tokens"]]
    bert_tokens = ["[CLS]", *[t for w in words for t in w], "[SEP]"]
    assert bert_tokens == full["expected_bert_tokens"]
    assert [tokenizer.ids[t] for t in bert_tokens] == full["expected_ids_with_real_vocab"]
    ids, _ = tokenizer.encode_sentences([" ".join(full["orig_tokens"])])
    assert ids.tolist() == full["expected_ids_with_real_vocab"][1:-1]


TRICKY = [
    "a\x0bb c\td\x00e\x7ff\r\ng", "Héllo WÖRLD ĀB naïve", "力加勝北区ᴵᴺᵀᵃছজটডণত", "x\u2028y\u00a0z", "  lead  trail ",
    "", "5°C — e.g. U.S.A's (1809–1865)", "a" * 250 + " ok", "snake_case-and~tilde|pipe", "\ufffdbad\ufffd bytes",
    "ΟΔΟΣ ΣΟΦΟΣ. Σ ΣΑ",
]


@pytest.mark.parametrize("lower_case", [True, False])
def test_fast_path_equals_hf_pipeline_on_wikipedia(shared_data, bert_vocab, lower_case):
    text = (shared_data / "corpus" / "mlperf_wiki_sample" / "wiki_01").read_text(encoding="utf-8")
    paragraphs = [line for line in text.split("\n") if line and not line.startswith("<")][:300]
    sentences = split_sentences("\n".join(paragraphs)) + TRICKY
    tokenizer = WordPieceTokenizer.from_vocab_file(bert_vocab, lower_case)
    ids, lengths = tokenizer.encode_sentences(sentences)
    again, _ = tokenizer.encode_sentences(sentences)  # from the memo this time
    # HF's pipeline after the reference's str.lower() of non-ASCII text (see test_final_sigma_...)
    expected = [e.ids for e in tokenizer._hf.encode_batch([tokenizer._lower(s) for s in sentences],
                                                          add_special_tokens=False)]
    assert lengths.tolist() == [len(e) for e in expected]
    assert ids.tolist() == [i for e in expected for i in e] == again.tolist()
    assert len(sentences) > 1000


def test_final_sigma_is_lower_cased_as_python_does(bert_vocab):
    """The reference lower-cases with str.lower(): a word-final Σ becomes ς, which HF alone makes σ."""
    tokenizer = WordPieceTokenizer.from_vocab_file(bert_vocab)
    text = "ΟΔΟΣ ΣΟΦΟΣ."
    assert text.lower() == "οδος σοφος."
    expected = tokenizer._hf.encode(text.lower(), add_special_tokens=False)
    assert tokenizer.tokenize(text) == expected.tokens != tokenizer._hf.encode(text, add_special_tokens=False).tokens
    assert tokenizer.encode_sentences([text])[0].tolist() == expected.ids
    assert tokenizer.basic_tokens(text) == ["οδος", "σοφος", "."]


def test_vocab_lines_end_at_newlines_only(tmp_path):
    """As the reference's load_vocab: a token may hold \x85 or \u2028 without shifting later ids."""
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\na\x85b\nc\u2028d\nhello\r\n", encoding="utf-8")
    assert read_vocab(path) == ["[PAD]", "[UNK]", "a\x85b", "c\u2028d", "hello"]


def test_vocab_without_pretraining_tokens_names_the_file(tmp_path):
    path = tmp_path / "vocab.txt"
    write_vocab(path, ["[PAD]", "[UNK]", "hello"])
    with pytest.raises(InputError, match=r"vocab\.txt.*lacks \[CLS\], \[SEP\], \[MASK\]"):
        WordPieceTokenizer.from_vocab_file(path)
    write_vocab(path, ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"])
    with pytest.raises(InputError, match=r"vocab\.txt.*\[PAD\] must have id 0"):
        check_pretraining_vocab(read_vocab(path), path)


@pytest.mark.parametrize("content, problem", [
    (b"", "empty"), (b"[PAD]\n\xff\xfe\n", "not UTF-8"), (b"[PAD]\nhi\nhi\n", "lines 2 and 3"),
    (b"Anarchism is a political philosophy.\n\nIt is sceptical of authority.\n", "line 1 holds several words.*text file"),
])
def test_bad_vocab_files(tmp_path, content, problem):
    path = tmp_path / "vocab.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=problem):
        read_vocab(path)
    with pytest.raises(InputError, match="no such vocab file"):
        read_vocab(tmp_path / "missing.txt")


def test_trained_vocab_has_pad_first_and_the_special_tokens(shared_data):
    lines = (shared_data / "google_bert" / "sample_text.txt").read_text(encoding="utf-8").splitlines()
    tokens = train_vocab(lines, vocab_size=400)
    assert tokens[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert len(tokens) <= 400 and len(set(tokens)) == len(tokens)
    check_pretraining_vocab(tokens, "trained")
    tokenizer = WordPieceTokenizer(tokens)
    ids, _ = tokenizer.encode_sentences(lines[:5])
    assert len(ids) > 20 and np.mean(ids == tokens.index("[UNK]")) < 0.05
