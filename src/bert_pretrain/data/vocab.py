"""The vocab file: one WordPiece token per line, its line number the token's id. Written by `prepare`,
read by everything that turns ids back into text or checks a model against its data."""

from __future__ import annotations

from pathlib import Path

from bert_pretrain.atomic import atomic_path
from bert_pretrain.errors import InputError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # the order a trained vocab gets: [PAD] = 0


def read_vocab(path: str | Path) -> list[str]:
    """The tokens of a vocab file (one per line, id = line number), checked for duplicates."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such vocab file; pass the path of a WordPiece vocab.txt") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: the vocab file is not UTF-8 ({err.reason} at byte {err.start})") from None
    # Lines end at "\n" only, as the reference's load_vocab reads them (str.splitlines would also
    # split at \x85, \u2028, ... inside a token and shift every later id).
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    tokens = [line.strip() for line in lines]
    if not tokens:
        raise InputError(f"{path}: the vocab file is empty")
    seen: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if " " in token or "\t" in token:  # how a text file looks, never a WordPiece token
            raise InputError(f"{path}: line {i + 1} holds several words ({token[:50]!r}); a WordPiece vocab has "
                             "one token per line. Is this a text file? Pass the model's vocab.txt")
        if token in seen:
            raise InputError(f"{path}: token {token!r} appears on lines {seen[token] + 1} and {i + 1}; "
                             "a WordPiece vocab lists each token once")
        seen[token] = i
    return tokens


def check_pretraining_vocab(tokens: list[str], source: str | Path) -> None:
    """Pretraining needs [PAD] at id 0 (the shards pad with 0 and 0 means 'no label') and the
    [UNK] [CLS] [SEP] [MASK] tokens; raise InputError naming `source` otherwise."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise InputError(f"{source}: the vocab lacks {', '.join(missing)}; BERT pretraining needs "
                         f"{', '.join(SPECIAL_TOKENS)} (use a BERT vocab.txt)")
    if tokens[0] != PAD:
        raise InputError(f"{source}: line 1 is {tokens[0]!r}, but [PAD] must have id 0 (the shard format pads "
                         "with 0 and reads label 0 as 'not masked')")


def is_lower_cased(tokens: list[str]) -> bool:
    """Whether a vocab is uncased (made from lower-cased text, so its tokenizer lower-cases too): none of its
    tokens, bar the bracketed special ones, changes when lower-cased. A cased vocab holds capitals by the
    thousand; BERT's uncased one holds only caseless symbols such as 'ℝ'."""
    return all(token == token.lower() for token in tokens if not (token.startswith("[") and token.endswith("]")))


def write_vocab(path: str | Path, tokens: list[str]) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
