//! Streaming stereo call recorder: customer on the left channel, bot on the right, 16-bit PCM
//! WAV at the transport's sample rate, written to disk while the call runs.
//!
//! # Timeline
//!
//! Positions are sample indices (per channel) on one call timeline. Wall time `at` (a
//! [`Duration`] since the call started, from the caller's clock) maps to position
//! `at × rate + offset`.
//!
//! - **Customer** audio is a continuous stream: each chunk is appended right after the previous
//!   one, however late or bursty it arrives, so jitter never tears the caller's speech apart.
//!   The first chunk is anchored so that it *ends* at its arrival time. Two slow corrections keep
//!   the stream aligned with wall time over a long call:
//!   - *gap*: if every chunk for `confirm` (1 s) arrives more than `gap_threshold` (200 ms)
//!     behind the stream position, the sender really paused (it did not just stall and burst):
//!     the smallest observed lag is inserted as silence where the lag appeared;
//!   - *lead*: if every chunk for `confirm` arrives earlier than the stream position says (the
//!     first chunk was anchored late, or buffered early audio was replayed at once), `offset`
//!     grows by the smallest observed lead, so later bot audio is placed later (the bot channel
//!     gets a little silence, nothing is dropped).
//! - **Bot** audio is placed the way a transport plays it: a frame starts at
//!   `max(end of the previous bot frame, at)`. Frames released ahead of real time (the driver
//!   keeps ~60 ms of lead) queue up behind each other; after a pause the next frame starts at its
//!   release time; positions with no bot audio are silence.
//! - **Barge-in**: [`StereoRecorder::bot_cleared`] drops bot audio positioned at or after `at`
//!   — released but never heard.
//!
//! # Memory and disk
//!
//! Audio is written (interleaved) up to the position both channels have committed: the customer
//! stream end (or a suspected gap) and the wall clock (bot audio before "now" can no longer be
//! cleared). Only what lies beyond that is buffered — normally the bot's playout lead and the
//! customer's network jitter, a few KiB. If the customer stream stalls, or runs far ahead, for
//! more than `max_pending` (4 s) the recorder flushes anyway (the customer channel gets silence),
//! so memory per call never depends on call length.
//!
//! The WAV header is rewritten every `checkpoint` (10 s of audio) and at [`StereoRecorder::finish`].
//! A process crash mid-call leaves a valid WAV file whose header covers the audio up to the last
//! checkpoint; the samples written after it are in the file but outside the declared data chunk
//! (a repair only needs to patch the two size fields — see [`repair_wav_header`]).
//!
//! I/O errors do not propagate into the call: the recorder records the first error, stops
//! writing and buffering, and [`StereoRecorder::finish`] reports it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Tuning of the alignment rules. The defaults suit 8/16 kHz telephony over TCP or WebRTC.
#[derive(Clone, Debug)]
pub struct RecorderConfig {
    /// Most audio (per channel) held in memory before a forced flush (default 4 s).
    pub max_pending: Duration,
    /// A customer lag that persists for `confirm` above this is a real pause (default 200 ms).
    pub gap_threshold: Duration,
    /// A customer lead that persists for `confirm` above this shifts the bot channel (default 20 ms).
    pub lead_threshold: Duration,
    /// How long a lag or lead must persist before it is corrected (default 1 s).
    pub confirm: Duration,
    /// Rewrite the WAV header after this much new audio (default 10 s).
    pub checkpoint: Duration,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            max_pending: Duration::from_secs(4),
            gap_threshold: Duration::from_millis(200),
            lead_threshold: Duration::from_millis(20),
            confirm: Duration::from_secs(1),
            checkpoint: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("recording I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("WAV error: {0}")]
    Wav(String),
    #[error("invalid recorder setting: {0}")]
    Config(String),
}

impl From<hound::Error> for RecorderError {
    fn from(e: hound::Error) -> Self {
        match e {
            hound::Error::IoError(io) => RecorderError::Io(io),
            other => RecorderError::Wav(other.to_string()),
        }
    }
}

/// What a finished (or running) recording contains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordingStats {
    pub sample_rate: u32,
    /// Stereo frames written (the duration in samples per channel).
    pub frames_written: u64,
    /// Size of the WAV file in bytes (header included).
    pub file_bytes: u64,
    /// Customer samples received.
    pub customer_samples: u64,
    /// Bot samples received (before barge-in truncation).
    pub bot_samples: u64,
    /// Bot samples dropped by `bot_cleared` (released, never heard).
    pub bot_samples_cleared: u64,
    /// Silence inserted into the customer channel (confirmed pauses and forced flushes).
    pub customer_silence_inserted: u64,
    /// How far the bot channel was shifted later by lead corrections, in samples.
    pub offset_samples: u64,
    /// Forced flushes (a channel ran more than `max_pending` ahead of the other).
    pub forced_flushes: u64,
    /// Audio dropped because the WAV size limit (4 GiB) was reached.
    pub samples_over_limit: u64,
}

impl RecordingStats {
    pub fn duration(&self) -> Duration {
        if self.sample_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.frames_written * 1_000_000 / self.sample_rate as u64)
    }
}

/// Size of the canonical PCM header hound writes (RIFF + fmt(16) + data).
pub const WAV_HEADER_BYTES: u64 = 44;
/// Largest data chunk a WAV can declare, rounded down to whole stereo frames.
const MAX_DATA_BYTES: u64 = (u32::MAX as u64 - WAV_HEADER_BYTES) / 4 * 4;
/// Buffers with more capacity than this (samples) are shrunk when mostly empty.
const SHRINK_ABOVE: usize = 32 * 1024;
/// Largest batch handed to hound at once (bounds its internal buffer to 32 KiB).
const WRITE_BATCH_FRAMES: usize = 8192;

/// A persistently-late customer stream under observation.
#[derive(Clone, Copy, Debug)]
struct GapSuspect {
    /// Stream position where the lag appeared (silence would go here).
    pos: u64,
    /// Wall position when it was first seen.
    since: u64,
    /// Smallest lag seen since then.
    min_lag: u64,
}

#[derive(Clone, Copy, Debug)]
struct LeadSuspect {
    since: u64,
    min_lead: u64,
}

/// The streaming recorder. `W` is normally a buffered file ([`StereoRecorder::create`]).
pub struct StereoRecorder<W: Write + Seek> {
    wav: Option<hound::WavWriter<W>>,
    /// Kept to fsync the file after the header is finalized.
    file: Option<Arc<File>>,
    rate: u64,
    cfg_samples: CfgSamples,
    /// Stream position written to disk (both channels).
    flushed: u64,
    /// Customer samples for positions [flushed, flushed + len).
    cust: VecDeque<i16>,
    /// Bot samples for positions [flushed, flushed + len); beyond: silence.
    bot: VecDeque<i16>,
    /// Highest wall position seen (bot audio before it is final).
    wall: u64,
    offset: u64,
    anchored: bool,
    gap: Option<GapSuspect>,
    lead: Option<LeadSuspect>,
    since_checkpoint: u64,
    error: Option<RecorderError>,
    stats: RecordingStats,
}

#[derive(Clone, Copy, Debug)]
struct CfgSamples {
    max_pending: u64,
    gap_threshold: u64,
    lead_threshold: u64,
    confirm: u64,
    checkpoint: u64,
}

/// `File` shared with the recorder so it can be fsync'd after hound finalizes the header.
pub struct SharedFile(Arc<File>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

impl Seek for SharedFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        (&*self.0).seek(pos)
    }
}

/// The file-backed recorder type.
pub type FileRecorder = StereoRecorder<BufWriter<SharedFile>>;

impl FileRecorder {
    /// Creates (truncating) `path` and writes the WAV header.
    pub fn create(path: &Path, sample_rate: u32, cfg: RecorderConfig) -> Result<FileRecorder, RecorderError> {
        let file = Arc::new(File::create(path)?);
        let writer = BufWriter::with_capacity(32 * 1024, SharedFile(file.clone()));
        let mut rec = StereoRecorder::new(writer, sample_rate, cfg)?;
        // Put the header on disk now: a crash at any point leaves a recognisable WAV.
        if let Some(w) = rec.wav.as_mut() {
            w.flush()?;
        }
        rec.file = Some(file);
        Ok(rec)
    }
}

impl<W: Write + Seek> StereoRecorder<W> {
    /// Starts a recording on `writer` (positioned at offset 0); the header is written now.
    pub fn new(writer: W, sample_rate: u32, cfg: RecorderConfig) -> Result<StereoRecorder<W>, RecorderError> {
        if !(1000..=192_000).contains(&sample_rate) {
            return Err(RecorderError::Config(format!("sample rate {sample_rate} Hz out of range")));
        }
        if cfg.confirm.is_zero() || cfg.max_pending < cfg.confirm * 2 {
            return Err(RecorderError::Config("need 0 < confirm and max_pending >= 2 × confirm".into()));
        }
        let spec =
            hound::WavSpec { channels: 2, sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let wav = hound::WavWriter::new(writer, spec)?;
        let rate = sample_rate as u64;
        let s = |d: Duration| d.as_micros() as u64 * rate / 1_000_000;
        Ok(StereoRecorder {
            wav: Some(wav),
            file: None,
            rate,
            cfg_samples: CfgSamples {
                max_pending: s(cfg.max_pending).max(1),
                gap_threshold: s(cfg.gap_threshold).max(1),
                lead_threshold: s(cfg.lead_threshold).max(1),
                confirm: s(cfg.confirm).max(1),
                checkpoint: s(cfg.checkpoint).max(1),
            },
            flushed: 0,
            cust: VecDeque::new(),
            bot: VecDeque::new(),
            wall: 0,
            offset: 0,
            anchored: false,
            gap: None,
            lead: None,
            since_checkpoint: 0,
            error: None,
            stats: RecordingStats { sample_rate, file_bytes: WAV_HEADER_BYTES, ..RecordingStats::default() },
        })
    }

    fn pos_of(&self, at: Duration) -> u64 {
        (at.as_micros() as u64).saturating_mul(self.rate) / 1_000_000 + self.offset
    }

    fn cust_end(&self) -> u64 {
        self.flushed + self.cust.len() as u64
    }

    fn bot_end(&self) -> u64 {
        self.flushed + self.bot.len() as u64
    }

    /// Caller audio received at `at` (since call start), in stream order.
    pub fn customer(&mut self, samples: &[i16], at: Duration) {
        if self.error.is_some() || samples.is_empty() {
            return;
        }
        self.stats.customer_samples += samples.len() as u64;
        let mut at_pos = self.pos_of(at);
        let len = samples.len() as u64;
        if !self.anchored {
            self.anchored = true;
            // The first chunk ends at its arrival time. If it is longer than the time elapsed
            // (early audio buffered before the call started), the customer timeline starts
            // before ours: shift the mapping, as long as no bot audio is placed yet.
            if len > at_pos && self.bot.is_empty() && self.flushed == 0 {
                self.offset += len - at_pos;
                self.stats.offset_samples = self.offset;
                at_pos = len;
            }
            let start = at_pos.saturating_sub(len).max(self.cust_end());
            self.pad_customer(start);
        }
        self.wall = self.wall.max(at_pos);
        let chunk_start = self.cust_end();
        self.cust.extend(samples.iter());
        self.track_alignment(chunk_start, at_pos);
        self.flush_ready();
    }

    /// A bot frame sent to the transport at `at`; it plays after any bot audio still queued.
    pub fn bot(&mut self, samples: &[i16], at: Duration) {
        if self.error.is_some() || samples.is_empty() {
            return;
        }
        self.stats.bot_samples += samples.len() as u64;
        let at_pos = self.pos_of(at);
        self.wall = self.wall.max(at_pos);
        let start = self.bot_end().max(at_pos);
        let fill = (start - self.bot_end()) as usize;
        self.bot.resize(self.bot.len() + fill, 0);
        self.bot.extend(samples.iter());
        self.flush_ready();
    }

    /// Barge-in at `at`: bot audio positioned at or after `at` was never heard; drop it.
    pub fn bot_cleared(&mut self, at: Duration) {
        if self.error.is_some() {
            return;
        }
        let at_pos = self.pos_of(at);
        self.wall = self.wall.max(at_pos);
        let keep = at_pos.max(self.flushed) - self.flushed;
        if (self.bot.len() as u64) > keep {
            self.stats.bot_samples_cleared += self.bot.len() as u64 - keep;
            self.bot.truncate(keep as usize);
        }
        self.flush_ready();
    }

    /// Samples (both channels) held in memory right now.
    pub fn buffered_samples(&self) -> usize {
        self.cust.len() + self.bot.len()
    }

    pub fn stats(&self) -> &RecordingStats {
        &self.stats
    }

    /// The first I/O error, if any (the recorder stopped writing then).
    pub fn error(&self) -> Option<&RecorderError> {
        self.error.as_ref()
    }

    /// Ends the recording at `at`: bot audio queued beyond `at` was never heard and is dropped,
    /// everything else is written, the header finalized and (for files) fsync'd.
    pub fn finish(mut self, at: Duration) -> Result<RecordingStats, RecorderError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        // A pause still under observation when the call ends: apply it if it held.
        if let Some(g) = self.gap.take() {
            if g.min_lag >= self.cfg_samples.gap_threshold {
                self.insert_customer_silence(g.pos, g.min_lag);
            }
        }
        self.bot_cleared(at);
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let end = self.cust_end().max(self.bot_end());
        self.write_through(end);
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let wav = self.wav.take().expect("writer present until finish");
        wav.finalize()?;
        if let Some(f) = self.file.take() {
            f.sync_all()?;
        }
        Ok(self.stats.clone())
    }

    fn pad_customer(&mut self, to: u64) {
        if to > self.cust_end() {
            let n = to - self.cust_end();
            self.stats.customer_silence_inserted += n;
            self.cust.resize(self.cust.len() + n as usize, 0);
        }
    }

    fn insert_customer_silence(&mut self, pos: u64, n: u64) {
        if n == 0 || pos < self.flushed {
            return;
        }
        let idx = ((pos - self.flushed) as usize).min(self.cust.len());
        let mut tail = self.cust.split_off(idx);
        self.cust.resize(self.cust.len() + n as usize, 0);
        self.cust.append(&mut tail);
        self.stats.customer_silence_inserted += n;
    }

    /// Gap and lead detection after a customer chunk that started at `chunk_start`.
    fn track_alignment(&mut self, chunk_start: u64, at_pos: u64) {
        let c = self.cfg_samples;
        let end = self.cust_end();
        if at_pos >= end {
            let lag = at_pos - end;
            self.lead = None;
            match &mut self.gap {
                None if lag > c.gap_threshold => {
                    self.gap = Some(GapSuspect { pos: chunk_start, since: at_pos, min_lag: lag });
                }
                None => {}
                Some(g) => {
                    g.min_lag = g.min_lag.min(lag);
                    if g.min_lag <= c.gap_threshold / 2 {
                        // A stall followed by a burst: the stream caught up, nothing was missing.
                        self.gap = None;
                    } else if at_pos - g.since >= c.confirm {
                        let g = *g;
                        self.gap = None;
                        self.insert_customer_silence(g.pos, g.min_lag);
                    }
                }
            }
        } else {
            let lead = end - at_pos;
            // Running ahead means the stream caught up: any suspected pause was a stall.
            self.gap = None;
            match &mut self.lead {
                None if lead > c.lead_threshold => self.lead = Some(LeadSuspect { since: at_pos, min_lead: lead }),
                None => {}
                Some(l) => {
                    l.min_lead = l.min_lead.min(lead);
                    if l.min_lead <= c.lead_threshold / 2 {
                        self.lead = None;
                    } else if at_pos - l.since >= c.confirm {
                        let shift = l.min_lead;
                        self.lead = None;
                        self.offset += shift;
                        self.wall += shift;
                        self.stats.offset_samples = self.offset;
                    }
                }
            }
        }
    }

    /// Writes everything both channels have committed; forces progress past a stalled channel.
    fn flush_ready(&mut self) {
        let c = self.cfg_samples;
        let cust_commit = self.gap.map_or(self.cust_end(), |g| g.pos);
        let mut limit = cust_commit.min(self.wall);
        // Customer stalled while time (and maybe bot audio) moves on.
        if self.wall > self.flushed + c.max_pending {
            // A pause under observation for this long is real: apply it now.
            if let Some(g) = self.gap.take() {
                self.insert_customer_silence(g.pos, g.min_lag);
                limit = self.cust_end().min(self.wall);
            }
        }
        if self.wall > self.flushed + c.max_pending {
            let target = self.wall - c.max_pending / 2;
            if target > limit {
                self.stats.forced_flushes += 1;
                if self.gap.is_some_and(|g| g.pos < target) {
                    self.gap = None;
                }
                self.pad_customer(target);
                limit = target;
            }
        }
        // Customer far ahead of the clock (or bot far ahead): bound the buffers anyway.
        let longest = self.cust.len().max(self.bot.len()) as u64;
        if longest > c.max_pending {
            let target = self.flushed + longest - c.max_pending / 2;
            if target > limit {
                self.stats.forced_flushes += 1;
                if self.gap.is_some_and(|g| g.pos < target) {
                    self.gap = None;
                }
                self.pad_customer(target);
                limit = target;
            }
        }
        if limit > self.flushed {
            self.write_through(limit);
        }
        // Give back memory grown during a stall once the backlog is written.
        for q in [&mut self.cust, &mut self.bot] {
            if q.capacity() > SHRINK_ABOVE && q.len() < q.capacity() / 4 {
                q.shrink_to(q.len() * 2);
            }
        }
    }

    /// Writes interleaved frames for positions [flushed, to). The customer channel must cover them.
    fn write_through(&mut self, to: u64) {
        if to <= self.flushed || self.error.is_some() {
            return;
        }
        self.pad_customer(to);
        let mut n = (to - self.flushed) as usize;
        // Respect the WAV size limit: past it, audio is counted and dropped.
        let room = (MAX_DATA_BYTES.saturating_sub(self.stats.frames_written * 4) / 4) as usize;
        if n > room {
            self.stats.samples_over_limit += (n - room) as u64;
        }
        let writable = n.min(room);
        let result = self.write_frames(writable);
        // Drop the written (or over-limit) frames from both buffers.
        let bot_n = n.min(self.bot.len());
        self.bot.drain(..bot_n);
        self.cust.drain(..n);
        self.flushed = to;
        n = writable;
        if let Err(e) = result {
            self.fail(e);
            return;
        }
        self.stats.frames_written += n as u64;
        self.stats.file_bytes += n as u64 * 4;
        self.since_checkpoint += n as u64;
        if self.since_checkpoint >= self.cfg_samples.checkpoint {
            self.since_checkpoint = 0;
            if let Some(w) = self.wav.as_mut() {
                if let Err(e) = w.flush() {
                    self.fail(e.into());
                }
            }
        }
    }

    /// Hands the first `n` frames of both buffers to hound, in batches.
    fn write_frames(&mut self, n: usize) -> Result<(), RecorderError> {
        let Some(wav) = self.wav.as_mut() else { return Ok(()) };
        // Plain slices interleave in a tight loop; ring-buffer iterators cost a branch per sample.
        let cust = self.cust.make_contiguous();
        let bot = self.bot.make_contiguous();
        let mut done = 0;
        while done < n {
            let batch = (n - done).min(WRITE_BATCH_FRAMES);
            let mut w = wav.get_i16_writer(batch as u32 * 2);
            // Bot audio covers [done, voiced); past its end the bot channel is silence.
            let voiced = bot.len().clamp(done, done + batch);
            if voiced > done {
                for (&c, &b) in cust[done..voiced].iter().zip(&bot[done..voiced]) {
                    w.write_sample(c);
                    w.write_sample(b);
                }
            }
            for &c in &cust[voiced..done + batch] {
                w.write_sample(c);
                w.write_sample(0);
            }
            w.flush()?;
            done += batch;
        }
        Ok(())
    }

    fn fail(&mut self, e: RecorderError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
        self.cust = VecDeque::new();
        self.bot = VecDeque::new();
    }
}

/// Fixes the RIFF and data sizes of a WAV left behind by a crash (hound's canonical 44-byte
/// PCM header), so the whole file is readable. Returns the audio bytes now declared.
pub fn repair_wav_header(path: &Path) -> Result<u64, RecorderError> {
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut header = [0u8; WAV_HEADER_BYTES as usize];
    f.read_exact(&mut header)?;
    if &header[0..4] != b"RIFF" || &header[8..12] != b"WAVE" || &header[36..40] != b"data" {
        return Err(RecorderError::Wav("not a canonical PCM WAV header".into()));
    }
    let block_align = u16::from_le_bytes([header[32], header[33]]).max(1) as u64;
    let len = f.metadata()?.len();
    let data = (len.saturating_sub(WAV_HEADER_BYTES) / block_align * block_align).min(MAX_DATA_BYTES);
    f.seek(SeekFrom::Start(4))?;
    f.write_all(&((data + WAV_HEADER_BYTES - 8) as u32).to_le_bytes())?;
    f.seek(SeekFrom::Start(40))?;
    f.write_all(&(data as u32).to_le_bytes())?;
    f.set_len(WAV_HEADER_BYTES + data)?;
    f.sync_all()?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 8000;
    const F: usize = 160;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Records with `f` (which returns the end time) into a temp file; returns (left, right, stats).
    fn run(f: impl FnOnce(&mut FileRecorder) -> Duration) -> (Vec<i16>, Vec<i16>, RecordingStats) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.wav");
        let mut r = FileRecorder::create(&path, RATE, RecorderConfig::default()).unwrap();
        let end = f(&mut r);
        let stats = r.finish(end).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), stats.file_bytes);
        let reader = hound::WavReader::open(&path).unwrap();
        let spec = reader.spec();
        assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (2, RATE, 16));
        let all: Vec<i16> = reader.into_samples::<i16>().map(|s| s.unwrap()).collect();
        let left = all.iter().step_by(2).copied().collect();
        let right = all.iter().skip(1).step_by(2).copied().collect();
        (left, right, stats)
    }

    fn frame(v: i16) -> Vec<i16> {
        vec![v; F]
    }

    fn first_nonzero(ch: &[i16]) -> Option<usize> {
        ch.iter().position(|&s| s != 0)
    }

    #[test]
    fn continuous_customer_and_paced_bot_align() {
        let (l, r, st) = run(|r| {
            for k in 0..100u64 {
                let v = if k == 50 { 1000 } else { 0 };
                r.customer(&frame(v), ms(20 * (k + 1)));
                if k == 30 {
                    // The bot releases 3 frames at once (60 ms lead), they play back to back.
                    for _ in 0..3 {
                        r.bot(&frame(7), ms(20 * (k + 1)));
                    }
                }
            }
            ms(2000)
        });
        assert_eq!(l.len(), 100 * F);
        assert_eq!(first_nonzero(&l), Some(50 * F));
        assert_eq!(first_nonzero(&r), Some(31 * F));
        assert_eq!(r.iter().filter(|&&s| s == 7).count(), 3 * F);
        assert_eq!(st.frames_written, 100 * F as u64);
    }

    #[test]
    fn barge_in_drops_unheard_bot_audio() {
        let (_, r, st) = run(|r| {
            for k in 0..50u64 {
                r.customer(&frame(0), ms(20 * (k + 1)));
                if (10..20).contains(&k) {
                    // Released 60 ms ahead: frame k plays at (k+1)*20 .. but released three frames early.
                    r.bot(&frame(5), ms(20 * (k + 1)));
                }
                if k == 19 {
                    r.bot_cleared(ms(20 * (k + 1)));
                }
            }
            ms(1000)
        });
        // Bot frames started at 220 ms (position 11*F) and were cut at 400 ms (20*F).
        assert_eq!(first_nonzero(&r), Some(11 * F));
        let heard = r.iter().filter(|&&s| s == 5).count();
        assert_eq!(heard, 9 * F);
        assert_eq!(st.bot_samples_cleared, F as u64);
    }

    #[test]
    fn bursty_customer_stays_contiguous() {
        let (l, _, st) = run(|r| {
            // 50 frames on time, then a 1 s stall and a burst of 50 frames, then on time again.
            let mut k = 0u64;
            while k < 200 {
                let at = if (50..100).contains(&k) { ms(20 * 100) } else { ms(20 * (k + 1)) };
                let v = if k == 75 || k == 150 { 900 } else { 0 };
                r.customer(&frame(v), at);
                k += 1;
            }
            ms(4000)
        });
        assert_eq!(st.customer_silence_inserted, 0);
        assert_eq!(l.len(), 200 * F);
        let hits: Vec<usize> = l.chunks(F).enumerate().filter(|(_, c)| c[0] == 900).map(|(i, _)| i).collect();
        assert_eq!(hits, vec![75, 150]);
    }

    #[test]
    fn a_real_sender_pause_is_filled_with_silence() {
        let (l, r, st) = run(|r| {
            for k in 0..50u64 {
                r.customer(&frame(1), ms(20 * (k + 1)));
            }
            // The sender stops for 2 s, then resumes at real-time pace.
            for k in 150..300u64 {
                r.customer(&frame(if k == 200 { 900 } else { 1 }), ms(20 * (k + 1)));
                if k == 200 {
                    r.bot(&frame(3), ms(20 * 201));
                }
            }
            ms(6000)
        });
        assert!(st.customer_silence_inserted >= 99 * F as u64, "{st:?}");
        let hit = l.chunks(F).position(|c| c[0] == 900).unwrap();
        assert!(hit.abs_diff(200) <= 1, "customer marker at frame {hit}");
        // Sent when customer frame 200 arrived (it spans frame 200): the bot starts right after.
        let bot_at = first_nonzero(&r).unwrap() / F;
        assert_eq!(bot_at, 201);
    }

    #[test]
    fn early_audio_shifts_the_bot_not_the_customer() {
        let (l, r, st) = run(|r| {
            // 300 ms of audio buffered before the call started arrives at t=10 ms.
            let mut early = vec![0i16; 15 * F];
            early[0] = 500;
            r.customer(&early, ms(10));
            for k in 0..100u64 {
                if k == 20 {
                    r.bot(&frame(4), ms(410));
                }
                r.customer(&frame(if k == 20 { 900 } else { 0 }), ms(10 + 20 * (k + 1)));
            }
            ms(2100)
        });
        assert_eq!(l[0], 500);
        // Customer frame 20 after the early chunk is stream frame 15 + 20; it arrived at
        // 10 + 420 ms, so it was spoken from 410 ms on — when the bot frame was sent.
        let cust = l.chunks(F).position(|c| c[0] == 900).unwrap();
        let bot = first_nonzero(&r).unwrap() / F;
        assert_eq!(cust, 35);
        assert_eq!(bot, 35);
        assert!(st.offset_samples > 0);
    }

    #[test]
    fn memory_is_bounded_when_the_customer_stalls() {
        let (l, r, st) = run(|r| {
            r.customer(&frame(0), ms(20));
            // 20 s of bot speech with no customer audio at all.
            let mut peak = 0;
            for k in 1..1000u64 {
                r.bot(&frame(2), ms(20 * (k + 1)));
                peak = peak.max(r.buffered_samples());
            }
            assert!(peak <= 2 * 4 * RATE as usize, "peak {peak}");
            ms(20 * 1001)
        });
        assert!(st.forced_flushes > 0);
        assert_eq!(l.len(), r.len());
        assert!(r.len() >= 999 * F);
    }

    #[test]
    fn checkpointed_header_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.wav");
        let mut r = FileRecorder::create(&path, RATE, RecorderConfig::default()).unwrap();
        for k in 0..(12 * 50u64) {
            r.customer(&frame(1), ms(20 * (k + 1)));
        }
        // Simulate a crash: the writer is leaked, never finalized.
        std::mem::forget(r);
        let reader = hound::WavReader::open(&path).unwrap();
        assert!(reader.duration() >= 10 * RATE, "{} frames readable", reader.duration());
        let declared = reader.duration();
        drop(reader);
        let data = repair_wav_header(&path).unwrap();
        assert!(data / 4 >= declared as u64);
        let reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.duration() as u64, data / 4);
    }

    #[test]
    fn bad_settings_are_refused() {
        let c = RecorderConfig { max_pending: ms(100), ..RecorderConfig::default() };
        assert!(StereoRecorder::new(std::io::Cursor::new(Vec::new()), RATE, c).is_err());
        assert!(StereoRecorder::new(std::io::Cursor::new(Vec::new()), 10, RecorderConfig::default()).is_err());
    }
}
