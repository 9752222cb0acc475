"""Build a CLIP tokenizer offline from open_clip's packaged BPE, shrunk to the words of a corpus."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path

from medisyn_cli.core.ownership import remove_temp

SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _bytes_to_unicode() -> list[str]:
    from open_clip.tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def clip_bpe_merges() -> list[tuple[str, str]]:
    """CLIP's 48,894 BPE merges, read from the vocabulary file inside the open_clip wheel."""
    import open_clip

    vocab_file = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(vocab_file).read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]


def write_tokenizer(folder: Path, merges: list[tuple[str, str]]) -> object:
    """Write vocab.json + merges.txt for these merges and return the loaded CLIPTokenizer."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + list(SPECIAL)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"),
        merges=str(folder / "merges.txt"),
        pad_token="<|endoftext|>",
        model_max_length=77,
    )
    tokenizer.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)


def build_corpus_tokenizer(texts: Iterable[str], folder: Path) -> object:
    """A CLIP tokenizer holding only the merges the corpus needs.

    Every kept token keeps the merges that built it, so the corpus tokenizes exactly as with
    the full vocabulary; other text falls back to shorter pieces, never to unknown tokens.
    """
    merges = clip_bpe_merges()
    full = write_tokenizer(folder / ".medisyn-tmp-full", merges)
    used = {tok for text in texts for tok in full.tokenize(text)}
    parts = {"".join(m): m for m in merges}
    keep: set[str] = set()
    stack = list(used)
    while stack:
        token = stack.pop()
        if token in keep or token not in parts:
            continue
        keep.add(token)
        stack.extend(parts[token])
    kept = [m for m in merges if "".join(m) in keep]
    remove_temp(folder / ".medisyn-tmp-full")
    return write_tokenizer(folder, kept)
