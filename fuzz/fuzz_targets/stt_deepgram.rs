#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cxb_fuzz_targets::run_target("stt_deepgram", data));
