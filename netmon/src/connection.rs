//! One client connection: a writer that drains the client's queue onto the socket
//! (shared event data written from the shared buffer, never copied per client when
//! large), and a reader that answers `discover`, `get_status` and `ping`.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use ipc::codec::CodecError;
use ipc::request::RequestError;
use ipc::server::{IdleRead, Stream};
use ipc::{JsonLines, MAX_LINE_LEN, PROTOCOL_VERSION, Reply, Request};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::hub::{ClientQueue, Hub, Outgoing};

/// Event data at least this large is written straight from the shared buffer;
/// smaller pieces are gathered into one write.
const INLINE_MAX: usize = 16 * 1024;
/// What one write gathers at most; the buffer is shrunk back after a larger one.
const GATHER_MAX: usize = 64 * 1024;

/// Serves one client until it goes, is dropped for not reading, or `shutdown`.
pub async fn serve(stream: Stream, hub: Arc<Hub>, shutdown: CancellationToken) {
    let queue = hub.register();
    let id = queue.id;
    let cancel = queue.cancel.clone();
    debug!(client = id, "client connected");
    let (r, w) = stream.into_split();
    let writer = Writer {
        w,
        seq: 0,
        buf: BytesMut::new(),
        instance: hub.instance().to_string(),
    };
    let writer = async {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = shutdown.cancelled() => {}
            r = writer.run(queue) => if let Err(e) = r {
                debug!(client = id, error = %e, "write failed");
            },
        }
    };
    let mut writer = std::pin::pin!(writer);
    tokio::select! {
        _ = &mut writer => {}
        _ = read_requests(r, &hub, id) => {
            // The client stopped sending (it may only have half-closed): drop its
            // slot so the writer ends once the replies already queued are written.
            hub.unregister(id);
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut writer).await;
        }
    }
    hub.unregister(id);
    debug!(client = id, "client disconnected");
}

struct Writer {
    w: OwnedWriteHalf,
    seq: u64,
    buf: BytesMut,
    instance: String,
}

impl Writer {
    /// Writes everything queued, in order, until the queue closes or a `Close`.
    async fn run(mut self, mut queue: ClientQueue) -> io::Result<()> {
        while let Some(first) = queue.rx.recv().await {
            let mut next = Some(first);
            let mut cost = 0;
            let mut close = false;
            // Gather what is already queued into few writes.
            while let Some(item) = next.take() {
                cost += item.cost();
                match item {
                    Outgoing::Event { kind, data } => {
                        self.seq += 1;
                        self.head(kind);
                        if data.len() >= INLINE_MAX {
                            self.flush().await?;
                            self.w.write_all(&data).await?;
                        } else {
                            self.buf.put_slice(&data);
                        }
                        self.buf.put_slice(b"}\n");
                    }
                    Outgoing::Reply(line) => self.buf.put_slice(&line),
                    Outgoing::Close => close = true,
                }
                if !close && self.buf.len() < GATHER_MAX {
                    next = queue.rx.try_recv().ok();
                }
            }
            self.flush().await?;
            queue.queued.fetch_sub(cost, Ordering::AcqRel);
            if close {
                return self.w.shutdown().await;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.w.write_all(&self.buf).await?;
            self.buf.clear();
        }
        if self.buf.capacity() > GATHER_MAX {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// `{"type":...,"version":...,"instance":...,"seq":N,"data":` before the data.
    fn head(&mut self, kind: &str) {
        let buf = &mut self.buf;
        buf.put_slice(b"{\"type\":\"");
        buf.put_slice(kind.as_bytes());
        buf.put_slice(format!("\",\"version\":{PROTOCOL_VERSION},\"instance\":").as_bytes());
        // The instance id is hex, but encode it as JSON anyway.
        let instance = serde_json::to_string(&self.instance).unwrap_or_default();
        buf.put_slice(instance.as_bytes());
        buf.put_slice(format!(",\"seq\":{},\"data\":", self.seq).as_bytes());
    }
}

async fn read_requests(r: IdleRead, hub: &Hub, id: u64) {
    let mut lines = FramedRead::new(r, JsonLines::new(MAX_LINE_LEN));
    while let Some(item) = lines.next().await {
        match item {
            Ok(line) => handle_line(hub, id, &line),
            Err(CodecError::LineTooLong { max }) => {
                let reply = Reply::err(None, format!("Line too long (limit {max} bytes)"));
                hub.reply(id, &reply, false, true);
                // Stop reading; the writer closes after the reply.
                std::future::pending::<()>().await;
            }
            Err(e) => {
                debug!(client = id, error = %e, "read failed");
                return;
            }
        }
    }
}

fn handle_line(hub: &Hub, id: u64, line: &[u8]) {
    let req = match Request::parse(line) {
        Ok(r) => r,
        Err((e, req_id)) => {
            let msg = match e {
                RequestError::InvalidJson => "Invalid JSON".to_string(),
                other => other.to_string(),
            };
            hub.reply(id, &Reply::err(req_id, msg), false, false);
            return;
        }
    };
    match req.command.as_str() {
        "discover" => hub.reply(id, &Reply::ok(req.id), true, false),
        "ping" => hub.reply(id, &Reply::ok(req.id), false, false),
        "get_status" => {
            let reply = Reply::ok(req.id).with("status", hub.status());
            hub.reply(id, &reply, false, false);
        }
        other => {
            let reply = Reply::err(req.id, format!("Unknown command: {other}"));
            hub.reply(id, &reply, false, false);
        }
    }
}
