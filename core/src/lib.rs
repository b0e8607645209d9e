#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod auth;
mod budget;
mod channels;
pub mod codec;
mod config;
mod conn;
pub mod effect;
mod error;
mod framing;
mod http;
mod ids;
pub mod limits;
mod liveness;
mod messages;
mod mosaic;
mod queries;
mod rooms;
mod server;
pub mod sql;
mod timers;
pub mod websocket;

pub use auth::{tokens_match, HostPolicy, OriginPolicy, Rights};
pub use codec::{
    decode_client_frame, encode_arrow_frame_header, escape_string_content, ClientMessage,
    DecodeError, Frame, JsonReply, JsonReplyHeader, JsonReplyWriter, QueryKind, ServerMessage,
};
pub use config::{Refusal, DEFAULT_STREAM_RESULTS_ABOVE, DEFAULT_STREAM_WINDOW_BYTES};
pub use effect::{
    Effect, Gate, QueryOutcome, RunQuery, StreamPolicy, StreamReader, UploadOutcome, UploadTable,
    Verdict,
};
pub use error::{ProtocolError, ServerError};
pub use framing::Malformed;
pub use http::{Dialect, HttpRequest, HttpResponse, HOST_NOT_ALLOWED, ORIGIN_NOT_ALLOWED};
pub use ids::{ConnId, Millis, QueryHandle, QueryId};
pub use limits::Limits;
pub use rooms::{check_room_change, RoomDocJob, RoomDocWorked, StoredRoom};
pub use server::{
    close_code, Config, ConnectionInfo, Server, DEFAULT_HTTP_IDLE_TIMEOUT_MS, MAX_AUTH_STRIKES,
};

#[cfg(test)]
mod tests;
