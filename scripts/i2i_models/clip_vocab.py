"""The real CLIP BPE vocabulary, written as the tokenizer files a real export has.

The merges come from bpe_simple_vocab_16e6.txt.gz inside the open_clip_torch wheel on PyPI
(the same file OpenAI's CLIP ships). The wheel is fetched once with pip and cached under
.deps/wheels; the extracted .gz is cached under .deps/clip and checked against its SHA-256.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

OPEN_CLIP_VERSION = "3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
BPE_GZ_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
BOS_ID = 49406
EOS_ID = 49407
VOCAB_SIZE = 49408
MAX_LENGTH = 77
N_MERGES = 49152 - 256 - 2  # as CLIP's SimpleTokenizer: 48894 merges

# The pre-tokenizer pattern of CLIP (HF tokenizers form).
SPLIT_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bpe_gz_bytes(cache_dir: Path, log=print) -> bytes:
    """Return the bytes of bpe_simple_vocab_16e6.txt.gz, fetching the wheel with pip if needed."""
    cached = cache_dir / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    if cached.exists():
        data = cached.read_bytes()
        if _sha256(data) == BPE_GZ_SHA256:
            return data
    wheels = cache_dir / "wheels"
    wheel = next(iter(sorted(wheels.glob(f"open_clip_torch-{OPEN_CLIP_VERSION}-*.whl"))), None)
    if wheel is None:
        log(f"fetching open_clip_torch=={OPEN_CLIP_VERSION} (for the CLIP vocabulary) into {wheels}")
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
            "--disable-pip-version-check", f"open_clip_torch=={OPEN_CLIP_VERSION}", "-d", str(wheels),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(
                "could not download the open_clip_torch wheel that carries the CLIP vocabulary:\n"
                f"{res.stderr.strip()}\nfix: check access to PyPI, or place "
                f"open_clip_torch-{OPEN_CLIP_VERSION}-py3-none-any.whl in {wheels}"
            )
        wheel = next(iter(sorted(wheels.glob(f"open_clip_torch-{OPEN_CLIP_VERSION}-*.whl"))), None)
        if wheel is None:
            raise RuntimeError(f"pip reported success but no open_clip_torch wheel is in {wheels}")
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(BPE_MEMBER)
    if _sha256(data) != BPE_GZ_SHA256:
        raise RuntimeError(
            f"{wheel}:{BPE_MEMBER} has SHA-256 {_sha256(data)}, expected {BPE_GZ_SHA256}; "
            "delete the wheel and run again"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(data)
    return data


def vocab_and_merges(gz: bytes) -> tuple[list[str], list[str]]:
    """Tokens in id order (49408) and merges ("a b" strings, 48894) exactly as CLIP builds them."""
    lines = gzip.decompress(gz).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    b2u = list(bytes_to_unicode().values())
    vocab = b2u + [v + "</w>" for v in b2u]
    vocab += ["".join(m.split()) for m in merges]
    vocab += [BOS, EOS]
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    assert len(set(vocab)) == VOCAB_SIZE
    return vocab, merges


def _dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def _added_token(tid: int, content: str, normalized: bool = True) -> dict:
    return {
        "id": tid,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": normalized,
        "special": True,
    }


def _added_tokens(vocab: list[str], pad: str) -> list[dict]:
    """The special tokens; a pad that is an ordinary vocabulary entry ("!" of SD 2.x / sd-turbo) becomes an
    added special token too, as in the tokenizer files transformers writes for those models."""
    toks = [_added_token(BOS_ID, BOS), _added_token(EOS_ID, EOS)]
    if pad not in (BOS, EOS):
        toks.insert(0, _added_token(vocab.index(pad), pad, normalized=False))
    return toks


def tokenizer_json(vocab: list[str], merges: list[str], pad: str) -> str:
    """HF `tokenizers` file for CLIP, in the form real CLIP exports have."""
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(vocab, pad),
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
                {"type": "Lowercase"},
            ],
        },
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": SPLIT_PATTERN},
                    "behavior": "Removed",
                    "invert": True,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
        "post_processor": {
            "type": "RobertaProcessing",
            "sep": [EOS, EOS_ID],
            "cls": [BOS, BOS_ID],
            "trim_offsets": False,
            "add_prefix_space": False,
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": EOS,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(vocab)},
            "merges": merges,
        },
    }
    return _dump(tok)


def special_tokens_map(pad: str) -> str:
    def tok(s):
        return {"content": s, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    return _dump({"bos_token": tok(BOS), "eos_token": tok(EOS), "pad_token": tok(pad), "unk_token": tok(EOS)})


def tokenizer_config(vocab: list[str], pad: str) -> str:
    added = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in _added_tokens(vocab, pad)}
    cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": EOS,
        "errors": "replace",
        "model_max_length": MAX_LENGTH,
        "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS,
    }
    return _dump(cfg)


def write_tokenizer(dest: Path, vocab: list[str], merges: list[str], *, pad: str, files: str,
                    cache: dict) -> None:
    """files: "slow+fast" (vocab.json + merges.txt + tokenizer.json), "slow" or "fast"."""
    dest.mkdir(parents=True, exist_ok=True)
    if files in ("slow", "slow+fast"):
        if "vocab.json" not in cache:
            cache["vocab.json"] = _dump({t: i for i, t in enumerate(vocab)})
            cache["merges.txt"] = "#version: 0.2\n" + "\n".join(merges) + "\n"
        (dest / "vocab.json").write_text(cache["vocab.json"], encoding="utf-8")
        (dest / "merges.txt").write_text(cache["merges.txt"], encoding="utf-8")
    if files in ("fast", "slow+fast"):
        key = "tokenizer.json " + pad
        if key not in cache:
            cache[key] = tokenizer_json(vocab, merges, pad)
        (dest / "tokenizer.json").write_text(cache[key], encoding="utf-8")
    (dest / "special_tokens_map.json").write_text(special_tokens_map(pad), encoding="utf-8")
    (dest / "tokenizer_config.json").write_text(tokenizer_config(vocab, pad), encoding="utf-8")
