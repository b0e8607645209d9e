//! `uploadArrow`: refused where only reads may run, admitted as work of its connection,
//! handed to the executor (which decodes and writes it), acknowledged or refused. (A child of
//! `queries`: it reads a query's entry.)

use super::*;
use crate::effect::UploadOutcome;

impl Server {
    pub(crate) fn start_upload(
        &mut self,
        conn: ConnId,
        query_id: Option<QueryId>,
        table_name: String,
        payload: Bytes,
        now: Millis,
    ) {
        if let Some(error) = self.write_refusal(conn, "uploadArrow") {
            let id = self.ids.id_or_new(query_id);
            return self.send_error(conn, error, Some(id), now);
        }
        match self.admit(conn, query_id, Work::Upload, None) {
            Ok((query, query_id)) => self.push(Effect::UploadTable(UploadTable {
                query,
                conn,
                query_id,
                table_name,
                payload,
            })),
            Err((error, id)) => self.send_error(conn, error, id, now),
        }
    }

    pub(crate) fn upload_done(&mut self, handle: QueryHandle, outcome: UploadOutcome, now: Millis) {
        // An upload that ran (even partly) may have replaced a table.
        self.invalidate_cache();
        let Some(InFlight {
            conn,
            query_id,
            cancelled,
            ..
        }) = self.finish(handle)
        else {
            return;
        };
        match outcome {
            UploadOutcome::Written => self.send(conn, ServerMessage::UploadAck { query_id }, now),
            UploadOutcome::Cancelled => {
                self.send_error(conn, ProtocolError::Cancelled, Some(query_id), now)
            }
            // A failure after the client cancelled is its cancel.
            UploadOutcome::Failed(_) if cancelled => {
                self.send_error(conn, ProtocolError::Cancelled, Some(query_id), now)
            }
            UploadOutcome::Failed(error) => self.send(
                conn,
                ServerMessage::Error {
                    error,
                    query_id: Some(query_id),
                },
                now,
            ),
        }
    }
}
