#!/usr/bin/env python3
"""Generate assets/audio/hold-music.wav: the default Agent Desk hold loop.

An original, gentle piece: four soft sine-pad chords (Cmaj7 - Am7 - Fmaj7 - G6, 2 s each)
under a slow pentatonic bell melody. 16 kHz, mono, 16-bit PCM, exactly 8.0 s.

The loop is click-free by construction: every note is rendered into the buffer modulo its
length, so a chord or bell that rings past the end continues at the start with its phase and
envelope intact, and every envelope starts and ends at exactly zero.

Deterministic: pure Python (no random numbers, no third-party packages); running it again
produces the same file. Run from the repository root:

    python3 scripts/make-hold-music.py [output.wav]
"""

import math
import struct
import sys
import wave

RATE = 16000
SECONDS = 8
N = RATE * SECONDS
PEAK = 0.5  # -6 dBFS; cxb-core plays it at gain 0.5 on top of that


def hz(midi):
    return 440.0 * 2.0 ** ((midi - 69) / 12.0)


def raised_cosine(x):
    """0 → 1 smoothly for x in [0, 1]."""
    x = min(max(x, 0.0), 1.0)
    return 0.5 - 0.5 * math.cos(math.pi * x)


def add_note(buf, start_s, length_s, env, voice):
    """Adds voice(t) * env(t) for t in [0, length_s), wrapping around the loop."""
    first = int(round(start_s * RATE))
    for i in range(int(length_s * RATE)):
        t = i / RATE
        buf[(first + i) % N] += env(t) * voice(t)


def pad_voice(freqs):
    def voice(t):
        v = 0.0
        for f in freqs:
            w = 2.0 * math.pi * f * t
            # Fundamental, a soft octave, and a slightly detuned copy for warmth.
            v += math.sin(w) + 0.25 * math.sin(2.0 * w) + 0.6 * math.sin(w * 1.003 + 1.0)
        return v / len(freqs)

    return voice


def pad_env(length):
    attack, release = 0.7, 1.0

    def env(t):
        return raised_cosine(t / attack) * raised_cosine((length - t) / release)

    return env


def bell_voice(f):
    def voice(t):
        w = 2.0 * math.pi * f * t
        return math.sin(w) + 0.12 * math.sin(2.76 * w) * math.exp(-t / 0.15)

    return voice


def bell_env(length):
    def env(t):
        return raised_cosine(t / 0.012) * math.exp(-t / 0.55) * raised_cosine((length - t) / 0.4)

    return env


def render():
    buf = [0.0] * N
    chords = [
        [60, 64, 67, 71],  # Cmaj7
        [57, 60, 64, 67],  # Am7
        [53, 57, 60, 64],  # Fmaj7
        [55, 59, 62, 64],  # G6
    ]
    pad_len = 2.9  # overlaps the next chord by 0.9 s; the last one wraps to the start
    for k, chord in enumerate(chords):
        add_note(buf, 2.0 * k, pad_len, pad_env(pad_len), pad_voice([hz(m) for m in chord]))
    scaled = [0.22 * v for v in buf]

    bells = [76, 79, 81, 79, 76, 74, 72, 74]  # E5 G5 A5 G5 E5 D5 C5 D5, one per second
    bell = [0.0] * N
    bell_len = 2.4
    for k, m in enumerate(bells):
        add_note(bell, 1.0 * k + 0.25, bell_len, bell_env(bell_len), bell_voice(hz(m)))
    mixed = [p + 0.16 * b for p, b in zip(scaled, bell)]

    peak = max(abs(v) for v in mixed)
    return [int(round(v / peak * PEAK * 32767.0)) for v in mixed]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "assets/audio/hold-music.wav"
    samples = render()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(struct.pack("<%dh" % len(samples), *samples))
    jump = abs(samples[0] - samples[-1])
    print(f"{out}: {len(samples)} samples, {SECONDS} s at {RATE} Hz, loop seam jump {jump}")


if __name__ == "__main__":
    main()
