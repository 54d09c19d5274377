"""Zero-shot tagging with CLIP (transformers `CLIPModel` + `CLIPProcessor`) over a tag vocabulary.

Each vocabulary entry becomes the text "a photo of {tag}"; its CLIP text embedding is computed once per
tagger. For an image, the scores are softmax(logit_scale * cos(image, text)) over the whole vocabulary, and
the tags are the `top_k` highest whose score is at least `threshold`, most confident first. The softmax makes
the threshold comparable across CLIP sizes (a uniform score would be 1 / len(vocabulary)); the defaults (top
8, 0.01) are not tuned on real weights here (none can be downloaded on the development machines).

The vocabulary shipped with the package (`tag_vocab.txt`, written for this project) lists ~400 common visual
concepts; `--tag-vocab FILE` uses another (one tag per line, '#' comments).
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import torch

from sanasr_cli.errors import TaggerUnavailableError
from sanasr_cli.prompts.base import DEFAULT_CLIP_MODEL, TAGGER_UPSAMPLE, tagger_input

BUILTIN_VOCAB = "tag_vocab.txt"
TEXT_FORMAT = "a photo of {}"
TAGGER_OFFLINE_HINT = "--tagger none or file run offline"  # named when CLIP weights need a download


def read_vocabulary_text(path: str | Path | None = None) -> str:
    """The vocabulary file's text: the built-in one when `path` is None."""
    if path is None:
        return resources.files("sanasr_cli.prompts").joinpath(BUILTIN_VOCAB).read_text(encoding="utf-8")
    p = Path(path).expanduser()
    if not p.is_file():
        raise TaggerUnavailableError(f"tag vocabulary {p} not found (--tag-vocab takes a text file, one tag a line)")
    return p.read_text(encoding="utf-8", errors="replace")


def parse_vocabulary(text: str) -> list[str]:
    """One tag per line; blank lines and '#' comments skipped; whitespace collapsed; duplicates dropped
    (the first kept)."""
    tags: list[str] = []
    for line in text.splitlines():
        tag = " ".join(line.split("#", 1)[0].split())
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def load_vocabulary(path: str | Path | None = None) -> list[str]:
    tags = parse_vocabulary(read_vocabulary_text(path))
    if not tags:
        raise TaggerUnavailableError(f"tag vocabulary {path or BUILTIN_VOCAB} has no tags")
    return tags


def select_tags(scores: torch.Tensor, vocabulary: list[str], top_k: int, threshold: float) -> list[str]:
    """scores (V,) aligned with `vocabulary` -> at most `top_k` tags with score >= threshold, highest
    first (ties keep vocabulary order)."""
    if scores.shape != (len(vocabulary),):
        raise ValueError(f"scores of shape {tuple(scores.shape)} for a vocabulary of {len(vocabulary)} tags")
    order = torch.sort(scores.float(), descending=True, stable=True).indices[: max(0, top_k)]
    return [vocabulary[i] for i in order.tolist() if scores[i] >= threshold]


def _source_identity(source: str) -> str:
    """A hub id as it is; a local folder by its resolved path and the sizes and times of its files, so
    that replaced weights give new cache keys."""
    p = Path(source).expanduser()
    if not p.is_dir():
        return source
    stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file())
    return f"{p.resolve()}:{hashlib.sha256(repr(stats).encode()).hexdigest()[:16]}"


def clip_image_macs(config=None) -> int:
    """MACs of one CLIP image embedding (vision tower + projection) at the config's image size,
    counted with torch FlopCounterMode on the meta device (no weights; on CPU tensors the counter misses the
    fused attention kernel). The vocabulary's text embeddings are computed once per run and not included.
    `config`: a transformers CLIPConfig (default: CLIPConfig(), i.e. ViT-B/32 at 224 x 224)."""
    from transformers import CLIPConfig, CLIPModel

    from sanasr_cli.measure import count_macs  # one counting rule for every cost report

    config = config or CLIPConfig()
    with torch.device("meta"):
        model = CLIPModel._from_config(config)
    size = config.vision_config.image_size
    return count_macs(lambda: model.get_image_features(pixel_values=torch.zeros(1, 3, size, size, device="meta")))


class ClipTagger:
    """Pi(x_L) by zero-shot CLIP. The model loads on the first image that is not in the tag cache."""

    name = "clip"

    def __init__(
        self,
        model: str | None = None,
        vocab: str | Path | None = None,
        top_k: int = 8,
        threshold: float = 0.01,
        device: str | torch.device = "cpu",
    ):
        self.source = str(model or DEFAULT_CLIP_MODEL)
        self.vocab_path = vocab
        vocab_text = read_vocabulary_text(vocab)
        self.vocabulary = parse_vocabulary(vocab_text)
        if not self.vocabulary:
            raise TaggerUnavailableError(f"tag vocabulary {vocab or BUILTIN_VOCAB} has no tags")
        self._vocab_sha = hashlib.sha256("\n".join(self.vocabulary).encode()).hexdigest()[:16]
        self.top_k = int(top_k)
        self.threshold = float(threshold)
        self.device = torch.device(device)
        self.model = None
        self.processor = None
        self._text_features: torch.Tensor | None = None

    @property
    def identity(self) -> str:
        return (
            f"clip|model={_source_identity(self.source)}|vocab={self._vocab_sha}|top_k={self.top_k}"
            f"|threshold={self.threshold}|text={TEXT_FORMAT}|upsample={TAGGER_UPSAMPLE}"
        )

    def load(self) -> None:
        if self.model is not None:
            return
        from transformers import CLIPModel, CLIPProcessor

        from sanasr_cli.hub import hub_load_mode, is_local_path

        # a download is announced first; offline, or where the hub cannot be reached: never tried (fails at once)
        local = hub_load_mode("the CLIP tagger", self.source, TAGGER_OFFLINE_HINT)
        try:
            self.processor = CLIPProcessor.from_pretrained(self.source, local_files_only=local)
            self.model = CLIPModel.from_pretrained(self.source, use_safetensors=True, local_files_only=local)
        except (OSError, ValueError) as e:
            where = "" if is_local_path(self.source) else " from the Hugging Face hub or its cache"
            raise TaggerUnavailableError(
                f"CLIP tagger model '{self.source}' could not be loaded{where}: pass --tagger-model with a hub id "
                "or a local folder holding a transformers CLIP model (config.json, model.safetensors, "
                "tokenizer files, "
                f"preprocessor_config.json) (cause: {str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from None
        self.model.eval().requires_grad_(False)
        self.model.to(self.device)

    @staticmethod
    def _features(out) -> torch.Tensor:
        # transformers < 5 returns the projected features; 5.x returns an output whose pooler_output
        # holds them
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def text_features(self) -> torch.Tensor:
        """(V, P) L2-normalised text embeddings of the vocabulary, on the model's device (computed
        once)."""
        self.load()
        if self._text_features is None:
            tok = self.processor.tokenizer
            max_len = self.model.config.text_config.max_position_embeddings
            feats = []
            for i in range(0, len(self.vocabulary), 256):
                texts = [TEXT_FORMAT.format(t) for t in self.vocabulary[i : i + 256]]
                enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
                out = self.model.get_text_features(
                    input_ids=enc["input_ids"].to(self.device),
                    attention_mask=enc["attention_mask"].to(self.device),
                )
                feats.append(self._features(out).float())
            self._text_features = torch.nn.functional.normalize(torch.cat(feats), dim=-1)
        return self._text_features.to(self.device)

    @torch.no_grad()
    def scores(self, image: torch.Tensor) -> torch.Tensor:
        """image (3, h, w) LQ in [0, 1] -> (V,) softmax scores over the vocabulary (float32, CPU)."""
        self.load()
        text = self.text_features()
        x = tagger_input(image)  # x4 bicubic; the processor then resizes and crops to CLIP's input size
        pixels = self.processor(images=x, do_rescale=False, return_tensors="pt")["pixel_values"]
        img = self._features(self.model.get_image_features(pixel_values=pixels.to(self.device)))
        img = torch.nn.functional.normalize(img.float(), dim=-1)
        logits = self.model.logit_scale.exp().float() * img @ text.T
        return logits.softmax(dim=-1)[0].cpu()

    def tags(self, image: torch.Tensor | None, path: Path | None) -> list[str]:
        if image is None:
            return []
        return select_tags(self.scores(image), self.vocabulary, self.top_k, self.threshold)

    def count_macs(self) -> int:
        """MACs of tagging one image (see `clip_image_macs`), from this tagger's model config."""
        from transformers import CLIPConfig

        if self.model is not None:
            return clip_image_macs(self.model.config)
        from sanasr_cli.hub import hub_load_mode

        try:
            local = hub_load_mode("the CLIP tagger", self.source, TAGGER_OFFLINE_HINT)
            return clip_image_macs(CLIPConfig.from_pretrained(self.source, local_files_only=local))
        except (OSError, ValueError) as e:
            raise TaggerUnavailableError(f"CLIP tagger config '{self.source}' not found ({e})") from None

    def release(self) -> None:
        """Move the model (and the vocabulary embeddings) to the CPU, freeing accelerator memory."""
        if self.model is not None and self.device.type != "cpu":
            self.model.to("cpu")
            self._text_features = None if self._text_features is None else self._text_features.cpu()
            self.device = torch.device("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
