//! A connection whose peer stops reading: the broker gives up on it after [`STALL`].
//!
//! A write is only ever pending when the peer's receive buffer and the kernel's send buffer
//! are both full, that is, when the peer has not read for a while. Without a bound, a client
//! that stops reading a proxied download (or any answer) would hold its connection, and one
//! of the broker's connection slots, for ever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long a write may wait for the peer to read: as long as an upstream's default
/// `idle_timeout`, since a peer that reads slowly is woken only once a third of a large send
/// buffer has drained.
pub(super) const STALL: Duration = Duration::from_secs(300);

/// `io`, whose writes fail with `TimedOut` once one has waited [`STALL`] for the peer.
#[derive(Debug)]
pub(super) struct Stall<IO> {
    io: IO,
    /// Set while a write waits: when it gives up.
    waiting: Option<Pin<Box<Sleep>>>,
    limit: Duration,
}

impl<IO> Stall<IO> {
    pub(super) fn new(io: IO, limit: Duration) -> Stall<IO> {
        Stall {
            io,
            waiting: None,
            limit,
        }
    }

    /// What a pending write becomes: still pending (the timer armed, so that this task is
    /// woken when it runs out), or an error once it has.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn done<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.pending(cx),
            ready => {
                self.waiting = None;
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Stall<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Stall<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.done(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.done(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.done(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A peer that never reads: the writer fails once its buffers are full and the limit has
    /// passed, instead of waiting for ever; a peer that reads keeps it going.
    #[test]
    fn a_write_to_a_peer_that_never_reads_gives_up_after_the_limit() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (ours, theirs) = tokio::net::UnixStream::pair().expect("pair");
            let mut writer = Stall::new(ours, Duration::from_millis(200));
            let chunk = vec![0u8; 64 * 1024];
            let started = std::time::Instant::now();
            let failed = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if let Err(err) = writer.write_all(&chunk).await {
                        return err;
                    }
                }
            })
            .await
            .expect("the write gave up within 10 s");
            assert_eq!(failed.kind(), io::ErrorKind::TimedOut);
            assert!(started.elapsed() >= Duration::from_millis(200));
            drop(theirs);
        });
    }
}
