//! A served connection: a Unix stream whose read side ends with a `TimedOut` error
//! once it has waited the idle timeout without a byte arriving.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, Sleep};

/// The read half of a [`Stream`]. The idle clock runs only while the handler waits
/// for input: time spent working on a request or writing its reply does not count.
#[derive(Debug)]
pub struct IdleRead {
    inner: OwnedReadHalf,
    timeout: Option<Duration>,
    /// Armed at the start of a wait, disarmed when the wait ends.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl AsyncRead for IdleRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            this.sleep = None;
            return Poll::Ready(r);
        }
        let Some(timeout) = this.timeout else {
            return Poll::Pending;
        };
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.sleep = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no request for {}; connection closed",
                        humantime::format_duration(timeout)
                    ),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future as _;

/// A connection as the handler gets it. Use it whole (e.g. in a `Framed`), or split
/// it with [`Stream::into_split`] to read and write from different tasks.
#[derive(Debug)]
pub struct Stream {
    read: IdleRead,
    write: OwnedWriteHalf,
}

impl Stream {
    pub(super) fn new(stream: UnixStream, timeout: Option<Duration>) -> Stream {
        let (inner, write) = stream.into_split();
        Stream {
            read: IdleRead {
                inner,
                timeout,
                sleep: None,
            },
            write,
        }
    }

    pub fn into_split(self) -> (IdleRead, OwnedWriteHalf) {
        (self.read, self.write)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.write.is_write_vectored()
    }
}
