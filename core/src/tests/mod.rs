mod harness;

mod codec_tests;
mod fuzz_replay;
mod props;
mod queries_tests;
mod rooms_tests;
mod session_tests;
