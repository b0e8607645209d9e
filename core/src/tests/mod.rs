mod harness;

mod budget_tests;
mod cluster_tests;
mod codec_tests;
mod docs_tests;
mod flights_tests;
mod http_tests;
mod mosaic_tests;
mod props;
mod queries_tests;
mod room_checks_tests;
mod room_jobs_tests;
mod room_log_tests;
mod rooms_tests;
mod session_tests;
mod streaming_tests;
