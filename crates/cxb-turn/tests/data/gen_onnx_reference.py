"""Regenerate onnx_reference.txt: what the Python stack (onnxruntime + pipecat's preprocessing)
answers for the test inputs of tests/onnx.rs, so the Rust port can be checked against it.

Usage (from the repository root, after scripts/fetch-models.sh; needs numpy and the pinned
onnxruntime wheel installed, e.g. `pip install numpy target/models/.wheels/onnxruntime-*.whl`):
    python3 crates/cxb-turn/tests/data/gen_onnx_reference.py target/models \
        > crates/cxb-turn/tests/data/onnx_reference.txt
"""
import sys
import types
import wave
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

models = Path(sys.argv[1])
root = Path(__file__).resolve().parents[4]
wheel = next((models / ".wheels").glob("pipecat_ai-*.whl"))
src = zipfile.ZipFile(wheel).read("pipecat/audio/turn/smart_turn/_whisper_features.py").decode()
wf = types.ModuleType("wf")
exec(compile(src, "_whisper_features.py", "exec"), wf.__dict__)


def read_wav(name):
    with wave.open(str(root / "assets/audio" / name)) as w:
        assert w.getframerate() == 8000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0


def upsample2(a):
    # Linear interpolation 8 kHz -> 16 kHz: out[2i] = a[i], out[2i+1] = (a[i] + a[i+1]) / 2,
    # the last sample repeated. tests/onnx.rs does the same.
    x = np.arange(len(a) * 2) / 2.0
    return np.interp(x, np.arange(len(a)), a).astype(np.float32)


opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
silero = ort.InferenceSession(str(models / "silero_vad.onnx"), sess_options=opts)


def silero_probs(a, sr):
    n, c = (256, 32) if sr == 8000 else (512, 64)
    state = np.zeros((2, 1, 128), np.float32)
    ctx = np.zeros((1, c), np.float32)
    out = []
    for i in range(0, len(a) - n + 1, n):
        x = np.concatenate([ctx, a[None, i : i + n]], axis=1)
        p, state = silero.run(None, {"input": x, "state": state, "sr": np.array(sr, np.int64)})
        ctx = x[:, -c:]
        out.append(float(p[0, 0]))
    return out


smart = ort.InferenceSession(str(models / "smart-turn-v3.2-cpu.onnx"), sess_options=opts)


def smart_turn(a16):
    m = 8 * 16000
    a16 = a16[-m:] if len(a16) > m else np.pad(a16, (m - len(a16), 0))
    f = wf.compute_whisper_log_mel_features(a16)[None]
    return float(smart.run(None, {"input_features": f})[0][0].item())


def fmt(values):
    return " ".join(f"{v:.6f}" for v in values)


print("# onnxruntime", ort.__version__, "numpy", np.__version__)
c1 = read_wav("caller-1.wav")
print("silero_8k_caller1", fmt(silero_probs(c1, 8000)))
print("silero_16k_caller1", fmt(silero_probs(upsample2(c1), 16000)))
# Smart Turn cases: `<name> <probability>`; trailing silence 300 ms as a VAD stop would leave.
tail = np.zeros(4800, np.float32)
for i in (1, 2, 3):
    a16 = upsample2(read_wav(f"caller-{i}.wav"))
    cut = a16[: len(a16) * 6 // 10]
    print(f"smart_turn caller{i}_full {smart_turn(np.concatenate([a16, tail])):.6f}")
    print(f"smart_turn caller{i}_cut60 {smart_turn(np.concatenate([cut, tail])):.6f}")
    print(f"smart_turn caller{i}_full_no_tail {smart_turn(a16):.6f}")
