"""MAGI-1's text side: the T5 encoder of the release (`ckpt/t5/t5-v1_1-xxl`), caption cleaning, special tokens.

`transformers` is optional (extra `magi`); it is imported when a `T5TextEncoder` is built, never at module import.
Everything loads from the local directory (`local_files_only=True`); nothing is downloaded.

Prompt processing as MAGI-1 does it (inference/model/t5/t5_model.py, inference/pipeline/prompt_process.py):
1. `clean_caption` twice (a subset of DeepFloyd-IF's cleaner, see its docstring),
2. tokenize to `max_length` (800) with padding "max_length", truncation, EOS added,
3. T5 encoder last_hidden_state in float32 -> (B, 800, 4096) and the attention mask (B, 800) int64,
4. per denoising chunk i of n (run.sh sets PAD_HQ=1 PAD_DURATION=1): [DURATION_i, HQ, caption...][:800] with
   DURATION_i = other_tokens[7 + min(n - i - 1, 7)] and HQ = other_tokens[1], the mask with two 1s prepended
   (`chunk_captions`). The special token vectors go through float16 first, as the official code loads them.
"""
from __future__ import annotations

import html
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowcache_core.errors import FlowcacheError

SPECIAL_TOKENS_FILE = "special_tokens.npz"
HQ_INDEX = 1  # other_tokens[1]: HQ_TOKEN
DURATION_BASE, DURATION_MAX = 7, 7  # other_tokens[7 + min(remaining, 7)]: DURATION_TOKEN_{remaining + 1}

# ------------------------------------------------------------------------------------------- cleaning
_URL = re.compile(r"\b((?:https?:(?:/{1,3}|[a-z0-9%])|www[.:]|[a-z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@)))\S*")
_HTML_TAG = re.compile(r"<[^>]+>")
_CJK = re.compile(r"[\u31c0-\u31ef\u31f0-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4dc0-\u4dff\u4e00-\u9fff]+")
_DASHES = re.compile(r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0\uFE31\uFE32\uFE58\uFE63\uFF0D]+")
_BAD_PUNCT = re.compile(r"[#®•©™&@·º½¾¿¡§~()\[\]{}|\\/*]+")


def clean_caption(caption: str) -> str:
    """A subset of DeepFloyd-IF's clean_caption, which MAGI-1 applies twice.

    Kept: URL-unquote, lowercase + strip, "<person>" -> "person", URLs removed, HTML unescaped and tags removed,
    @handles removed, CJK ideographs removed, dash variants -> "-", curly quotes -> straight ones, IP addresses,
    "\\n" literals, "#123" tags, 6+ digit numbers and file names (x.png/jpg/mp4...) removed, runs of quotes collapsed,
    ".." -> " ", bad punctuation (#®•©™&@·º½¾¿¡§~()[]{}|\\/*) -> " ", " . " -> " ", more than 3 "-"/"_" -> spaces,
    "\\D," etc. followed by a space, whitespace collapsed, a surrounding pair of quotes and leading/trailing
    stray punctuation removed.
    Left out (needs ftfy / BeautifulSoup, or shop-spam rules): ftfy's mojibake repair, BeautifulSoup's full
    HTML parsing (a regex drops tags instead), the "free shipping"/"click for"/"page N"/product-code rules.
    """
    c = urllib.parse.unquote_plus(str(caption)).strip().lower()
    c = c.replace("<person>", "person")
    c = _URL.sub("", c)
    c = html.unescape(html.unescape(c))
    c = _HTML_TAG.sub("", c)
    c = re.sub(r"@[\w\d]+\b", "", c)
    c = _CJK.sub("", c)
    c = _DASHES.sub("-", c)
    c = re.sub(r"[`´«»“”¨]", '"', c)
    c = re.sub(r"[‘’]", "'", c)
    c = re.sub(r"&quot;?|&amp", "", c)
    c = re.sub(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " ", c)
    c = re.sub(r"\\n", " ", c)
    c = re.sub(r"#\d{1,3}\b|#\d{5,}\b|\b\d{6,}\b", "", c)
    c = re.sub(r"\S+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)", "", c)
    c = re.sub(r"[\"']{2,}", '"', c)
    c = re.sub(r"\.{2,}", " ", c)
    c = _BAD_PUNCT.sub(" ", c)
    c = re.sub(r"\s+\.\s+", " ", c)
    if len(re.findall(r"[-_]", c)) > 3:
        c = re.sub(r"[-_]", " ", c)
    c = re.sub(r"\b\s+:\s+", ": ", c)
    c = re.sub(r"(\D[,./])\b", r"\1 ", c)
    c = re.sub(r"\s+", " ", c).strip()
    c = re.sub(r"^[\"']([\w\W]+)[\"']$", r"\1", c)
    c = re.sub(r"^['_,\-:;]", "", c)
    c = re.sub(r"['_,\-:+]$", "", c)
    c = re.sub(r"^\.\S+$", "", c)
    return c.strip()


# ------------------------------------------------------------------------------------------- special tokens
@dataclass
class SpecialTokens:
    """`special_tokens.npz` of MAGI-1 (example/assets): caption_token (1, D), logo_token (1, D), other_tokens (100, D)."""

    caption: Tensor
    logo: Tensor
    other: Tensor

    @property
    def dim(self) -> int:
        return int(self.other.shape[-1])

    @property
    def hq(self) -> Tensor:  # (D,)
        return self.other[HQ_INDEX]

    def duration(self, remaining_chunks: int) -> Tensor:  # (D,): "N chunks remain after this one"
        return self.other[DURATION_BASE + min(max(int(remaining_chunks), 0), DURATION_MAX)]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SpecialTokens":
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as f:
                arrays = {k: np.asarray(f[k]) for k in ("caption_token", "logo_token", "other_tokens")}
        except KeyError as e:
            raise FlowcacheError(f"special tokens {str(p)!r} lack array {e.args[0]!r} (need caption_token, logo_token, other_tokens)") from None
        except (OSError, ValueError) as e:
            raise FlowcacheError(f"special tokens {str(p)!r} are not a readable .npz file ({e})") from None
        other = arrays["other_tokens"]
        if other.ndim != 2 or other.shape[0] < DURATION_BASE + DURATION_MAX + 1:
            raise FlowcacheError(f"special tokens {str(p)!r}: other_tokens has shape {other.shape}, need (>= 15, D)")
        # The official code loads them as float16 before use; round the same way.
        t = {k: torch.from_numpy(v.astype(np.float16)).float().reshape(-1, other.shape[1]) for k, v in arrays.items()}
        return cls(t["caption_token"], t["logo_token"], t["other_tokens"])


def chunk_captions(caption: Tensor, mask: Tensor, num_chunks: int, tokens: SpecialTokens | None,
                   pad_hq: bool = True, pad_duration: bool = True) -> tuple[Tensor, Tensor]:
    """Per denoising chunk captions: caption (L, D), mask (L,) -> (n, L, D), (n, L).

    Chunk i of n gets [DURATION_{n-i-1}, HQ, caption...][:L] (MAGI-1 with PAD_HQ=1 PAD_DURATION=1); mask likewise
    with 1s prepended. Without special tokens every chunk gets the caption unchanged. An empty prompt (mask all 0)
    stays unchanged too: the sampler uses the null caption for it.
    """
    L, D = caption.shape
    if num_chunks < 1:
        raise FlowcacheError(f"chunk_captions needs num_chunks >= 1, got {num_chunks}")
    caps = caption[None].expand(num_chunks, L, D).clone()
    masks = mask[None].expand(num_chunks, L).clone()
    if tokens is None or int(mask.sum()) == 0:
        return caps, masks
    if tokens.dim != D:
        raise FlowcacheError(f"special tokens have dim {tokens.dim}, the text encoder gives {D}")
    for i in range(num_chunks):
        front = []
        if pad_duration:
            front.append(tokens.duration(num_chunks - i - 1))
        if pad_hq:
            front.append(tokens.hq)
        if not front:
            break
        head = torch.stack(front).to(caption)  # (k, D)
        caps[i] = torch.cat([head, caption])[:L]
        masks[i] = torch.cat([mask.new_ones(len(front)), mask])[:L]
    return caps, masks


def find_special_tokens(*dirs: str | os.PathLike) -> Path | None:
    """The first `special_tokens.npz` in the given directories (None if there is none)."""
    for d in dirs:
        p = Path(d) / SPECIAL_TOKENS_FILE
        if p.is_file():
            return p
    return None


# ------------------------------------------------------------------------------------------- T5 encoder
def _transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise FlowcacheError("the MAGI-1 T5 text encoder needs `transformers` and `sentencepiece`: "
                             "pip install 'flowcache[magi]' (or: pip install transformers sentencepiece)") from None
    return transformers


class T5TextEncoder:
    """transformers T5EncoderModel + tokenizer from a local dir; TextEncoder protocol (B, max_length, d_model) float32."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", max_length: int = 800,
                 dtype: torch.dtype = torch.float32, special_tokens: SpecialTokens | None = None,
                 clean: bool = True):
        tf = _transformers()
        p = Path(path)
        if not (p / "config.json").is_file():
            raise FlowcacheError(f"T5 directory {str(p)!r} has no config.json (expected a transformers T5EncoderModel dir)")
        try:
            self.tokenizer = tf.AutoTokenizer.from_pretrained(str(p), local_files_only=True)
            dtype_kw = "dtype" if int(tf.__version__.split(".")[0]) >= 5 else "torch_dtype"  # renamed in transformers 5
            self.model = tf.T5EncoderModel.from_pretrained(str(p), local_files_only=True, **{dtype_kw: dtype})
        except (OSError, ValueError, TypeError) as e:  # transformers' errors for missing/corrupt files
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FlowcacheError(f"T5 directory {str(p)!r} could not be loaded ({msg})") from None
        self.model = self.model.to(device).eval()
        self.path, self.device, self.clean = p, torch.device(device), clean
        self.dim = int(self.model.config.d_model)
        self.max_length = int(max_length)
        self.special_tokens = special_tokens
        if special_tokens is not None and special_tokens.dim != self.dim:
            raise FlowcacheError(f"special tokens have dim {special_tokens.dim}, T5 {str(p)!r} has d_model {self.dim}")

    def preprocess(self, prompt: str) -> str:
        return clean_caption(clean_caption(prompt)) if self.clean else prompt.lower().strip()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        if isinstance(prompts, str):
            raise FlowcacheError("encode takes a list of prompts, not one string")
        texts = [self.preprocess(t) for t in prompts]
        tok = self.tokenizer(texts, max_length=self.max_length, padding="max_length", truncation=True,
                             return_attention_mask=True, add_special_tokens=True, return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        emb = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        for b, prompt in enumerate(prompts):  # an empty prompt: all-zero mask, the sampler uses the null caption
            if not prompt.strip():
                mask[b] = 0
        return emb.float(), mask.long()

    def chunk_captions(self, caption: Tensor, mask: Tensor, num_chunks: int) -> tuple[Tensor, Tensor]:
        """Per denoising chunk captions with MAGI-1's duration + HQ tokens (when special tokens were found)."""
        return chunk_captions(caption, mask, num_chunks, self.special_tokens)
