"""The language-model text source (fake books, a tokenizer trained in memory) and, when
``make llm-data`` has run, the real SmolLM2 teacher (slow)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from autocompress.errors import ConfigError
from autocompress.llm import text as llm_text
from autocompress.llm.text import (
    SPLITS,
    TextSplits,
    books,
    chunk,
    load_splits,
    split_documents,
    token_sequences,
)

WORDS = ("whale", "sea", "ship", "captain", "harpoon", "rope", "deck", "storm", "sail", "night",
         "day", "wind", "moon", "star", "island", "shore", "boat", "oar", "fish", "bird", "cloud",
         "rain", "river", "hill", "road", "king", "queen", "house", "door")


def _book(seed: int, paragraphs: int) -> str:
    rng = torch.Generator().manual_seed(seed)
    lines = [f"[Book {seed} by Nobody 1900]", ""]
    for _ in range(paragraphs):
        picks = torch.randint(0, len(WORDS), (60,), generator=rng).tolist()
        lines += [" ".join(WORDS[i] for i in picks[:30]), " ".join(WORDS[i] for i in picks[30:]),
                  ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def fake_folder(tmp_path_factory) -> Path:
    """Eight small books (about 4k to 23k characters), one with CRLF line ends."""
    folder = tmp_path_factory.mktemp("gutenberg")
    for index in range(8):
        body = _book(index, paragraphs=10 + 10 * index)
        if index == 3:
            body = body.replace("\n", "\r\n")
        (folder / f"author{index}-book.txt").write_text(body, encoding="utf-8", newline="")
    (folder / "README").write_text("not a book")
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer trained on the fake vocabulary, as a transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "[EOS]"])
    core.train_from_iterator([" ".join(WORDS), "[ Book by Nobody ] 0 1 2 3 4 5 6 7 1900"],
                             trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="[EOS]")


def _chars(documents) -> int:
    return sum(len(doc.text) for doc in documents)


def test_books_reads_txt_normalized(fake_folder, monkeypatch):
    found = books(fake_folder)
    assert sorted(found) == [f"author{i}-book" for i in range(8)]
    assert "\r" not in found["author3-book"]
    assert found["author0-book"].startswith("[Book 0 by Nobody 1900]\n")
    monkeypatch.setenv("AUTOCOMPRESS_DATA", str(fake_folder.parent))
    assert llm_text.data_dir() == fake_folder.parent
    assert books(fake_folder) == found


def test_missing_folder_says_make_install(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="make install") as error:
        books()
    assert "\n" not in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="make llm-data"):
        books(tmp_path / "empty")


def test_chunks_cover_each_book_exactly_at_paragraphs(fake_folder):
    for name, body in books(fake_folder).items():
        documents = chunk(name, body, 2_000)
        assert "".join(doc.text for doc in documents) == body
        assert [doc.start for doc in documents] == [
            sum(len(d.text) for d in documents[:i]) for i in range(len(documents))]
        assert all(1_000 <= len(doc.text) <= 3_000 for doc in documents[:-1])
        assert all(doc.text.endswith("\n\n") for doc in documents[:-1])


@pytest.mark.parametrize("by", ["chunk", "book"])
def test_splits_disjoint_deterministic_and_sized(fake_folder, by):
    found = books(fake_folder)
    total = sum(len(body) for body in found.values())
    fractions = {"train": 0.6, "calibration": 0.1, "validation": 0.15, "test": 0.15}
    splits = split_documents(found, fractions, seed=0, by=by, chunk_chars=1_500)
    assert set(splits) == set(SPLITS) and all(splits[s] for s in SPLITS)
    names = [doc.name for s in SPLITS for doc in splits[s]]
    assert len(names) == len(set(names))  # no document in two splits
    for name, body in found.items():  # every character in exactly one split
        pieces = sorted((doc for s in SPLITS for doc in splits[s] if doc.book == name),
                        key=lambda doc: doc.start)
        assert "".join(doc.text for doc in pieces) == body
        if by == "book":
            assert len(pieces) == 1
    assert split_documents(found, fractions, seed=0, by=by, chunk_chars=1_500) == splits
    assert split_documents(found, fractions, seed=1, by=by, chunk_chars=1_500) != splits
    for split, share in fractions.items():  # within a document (chunk) or a book of the share
        slack = 3_000 if by == "chunk" else max(len(body) for body in found.values())
        assert abs(_chars(splits[split]) - share * total) <= slack


def test_fractions_default_and_checked(fake_folder):
    found = books(fake_folder)
    splits = split_documents(found, chunk_chars=1_000)
    total = sum(len(body) for body in found.values())
    assert abs(_chars(splits["train"]) / total - 0.7) < 0.03
    assert not split_documents(found, {"train": 0.9, "test": 0.1}, chunk_chars=1_000)["validation"]
    for bad in ({"train": 0.5, "test": 0.1}, {"train": 1.2, "test": -0.2}, {"tset": 1.0}):
        with pytest.raises(ConfigError, match="fractions"):
            split_documents(found, bad)
    with pytest.raises(ConfigError, match="by"):
        split_documents(found, by="sentence")


def test_token_sequences_join_with_eos_and_cut(tokenizer):
    eos = tokenizer.eos_token_id
    whale, sea, ship = (tokenizer.convert_tokens_to_ids(w) for w in ("whale", "sea", "ship"))
    tokens = token_sequences(tokenizer, ["whale sea", "ship whale sea", "ship"], 3)
    assert tokens.dtype == torch.int64
    assert tokens.tolist() == [[whale, sea, eos], [ship, whale, sea]]  # the tail "eos ship" drops
    assert token_sequences(tokenizer, [], 4).shape == (0, 4)
    with pytest.raises(ConfigError, match="length"):
        token_sequences(tokenizer, ["whale"], 0)


def test_token_sequences_subset_is_seeded(fake_folder, tokenizer):
    texts = list(books(fake_folder).values())
    full = token_sequences(tokenizer, texts, 16)
    assert full.shape[1] == 16 and full.shape[0] > 50
    assert (full == tokenizer.eos_token_id).sum() == len(texts) - 1
    part = token_sequences(tokenizer, texts, 16, max_sequences=10, seed=3)
    assert part.shape == (10, 16)
    assert torch.equal(part, token_sequences(tokenizer, texts, 16, max_sequences=10, seed=3))
    assert not torch.equal(part, token_sequences(tokenizer, texts, 16, max_sequences=10, seed=4))
    rows = {tuple(row) for row in full.tolist()}
    assert all(tuple(row) in rows for row in part.tolist())
    assert torch.equal(token_sequences(tokenizer, texts, 16, max_sequences=10**6), full)


def test_load_splits_describe(fake_folder, tokenizer):
    splits = load_splits(tokenizer, 16, folder=fake_folder, chunk_chars=1_500,
                         max_sequences={"train": 20})
    assert isinstance(splits, TextSplits)
    assert splits.train.shape == (20, 16) and splits["test"].shape[0] > 0
    line = splits.describe()
    assert "\n" not in line and all(f"{split}:" in line for split in SPLITS)
    assert "20 x 16" in line
    again = load_splits(tokenizer, 16, folder=fake_folder, chunk_chars=1_500,
                        max_sequences={"train": 20})
    assert all(torch.equal(splits[s], again[s]) for s in SPLITS)
    test_rows = {tuple(row) for row in splits.test.tolist()}  # no test sequence elsewhere
    assert not any(tuple(row) in test_rows
                   for s in ("train", "calibration", "validation") for row in splits[s].tolist())


def test_smollm2_missing_gguf_says_make_install(tmp_path, monkeypatch):
    from autocompress.llm import smollm2

    monkeypatch.setenv("AUTOCOMPRESS_DATA", str(tmp_path))
    assert smollm2.gguf_path() == tmp_path / "smollm2" / smollm2.GGUF_NAME
    with pytest.raises(ConfigError, match="make install"):
        smollm2.load_smollm2()
    assert not (tmp_path / "smollm2" / "cache").exists()


@pytest.mark.slow
def test_real_smollm2_loads_and_caches(tmp_path):
    """First load from the GGUF (about 30 s), then from the cache it wrote (about a second)."""
    from autocompress.llm import smollm2

    if not smollm2.gguf_path().is_file():
        pytest.skip(f"{smollm2.gguf_path()} is absent: run `make llm-data`")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    cache = tmp_path / "cache"
    start = time.perf_counter()
    model, tokenizer = smollm2.load_smollm2(cache)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again, _ = smollm2.load_smollm2(cache)
    cached = time.perf_counter() - start
    print(f"SmolLM2 load: {first:.1f} s from the GGUF, {cached:.1f} s from the cache")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache"]  # no staging left
    assert abs(sum(p.numel() for p in model.parameters()) - 134.5e6) < 0.1e6
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert model.config._attn_implementation == "eager"
    ids = tokenizer("Call me Ishmael. Some years ago", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
