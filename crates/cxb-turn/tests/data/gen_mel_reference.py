"""Regenerate mel_reference.txt: pipecat's own feature code run on a fixed test signal.

Usage (from the repository root, after scripts/fetch-models.sh; needs numpy):
    python3 crates/cxb-turn/tests/data/gen_mel_reference.py \
        target/models/.wheels/pipecat_ai-1.14.0-py3-none-any.whl > crates/cxb-turn/tests/data/mel_reference.txt

The module is loaded straight from the pinned wheel, so the reference is the exact
preprocessing pipecat-ai 1.14.0 feeds smart-turn-v3.2 with.
"""
import sys
import types
import zipfile

import numpy as np

wheel = sys.argv[1]
src = zipfile.ZipFile(wheel).read("pipecat/audio/turn/smart_turn/_whisper_features.py").decode()
wf = types.ModuleType("wf")
exec(compile(src, "_whisper_features.py", "exec"), wf.__dict__)


def two_tone():
    # 3 s of 440 Hz + 3 kHz; the extractor pads the other 5 s with zeros at the end.
    n = np.arange(48000, dtype=np.float64)
    x = 0.3 * np.sin(2 * np.pi * 440.0 * n / 16000) + 0.2 * np.sin(2 * np.pi * 3000.0 * n / 16000)
    return x.astype(np.float32)


def fmt(values):
    return " ".join(f"{v:.6f}" for v in values)


f = wf.compute_whisper_log_mel_features(two_tone())
assert f.shape == (80, 800), f.shape
print("# pipecat-ai 1.14.0 compute_whisper_log_mel_features(two_tone), numpy", np.__version__)
print("# filter_sums: per mel filter, the sum of its 201 weights")
print("filter_sums", fmt(wf._MEL_FILTERS.sum(axis=0)))
print("# mel_means: per mel bin, the mean over the 800 frames")
print("mel_means", fmt(f.mean(axis=1)))
for frame in (0, 1, 150, 299, 300, 301, 500, 799):
    print(f"frame {frame}", fmt(f[:, frame]))
