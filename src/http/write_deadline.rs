//! A connection whose answer must keep moving: a write that can make no progress for
//! longer than the deadline fails, and the connection closes.
//!
//! A client that asks and never reads would otherwise hold its answer's memory and
//! its connection for as long as it likes, and keep a shutting-down server waiting.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `inner`, with writes that fail once they have waited `deadline` without progress.
#[derive(Debug)]
pub(super) struct WriteDeadline<S> {
    inner: S,
    deadline: Duration,
    /// Armed while a write waits for the client to read.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub(super) fn new(inner: S, deadline: Duration) -> Self {
        Self {
            inner,
            deadline,
            stalled: None,
        }
    }

    /// Called when a write is pending: arms the timer on the first wait, and fails
    /// once it has run out.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let deadline = self.deadline;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing of its answer for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Passes a write's outcome on: progress disarms the timer, a wait checks it.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => match self.check_stall(cx) {
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                _ => Poll::Pending,
            },
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn a_write_the_reader_never_takes_fails_after_the_deadline() {
        // A pipe that holds 1 KiB, whose far end never reads.
        let (near, _far) = tokio::io::duplex(1024);
        let mut stream = WriteDeadline::new(near, Duration::from_millis(100));
        let written = stream.write_all(&[0u8; 64 * 1024]).await;
        let error = written.expect_err("the write cannot finish");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_reader_that_keeps_reading_gets_everything() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut stream = WriteDeadline::new(near, Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut far, &mut all)
                .await
                .map(|_| all.len())
        });
        stream.write_all(&[7u8; 256 * 1024]).await.expect("written");
        stream.shutdown().await.expect("closed");
        drop(stream);
        assert_eq!(reader.await.unwrap().unwrap(), 256 * 1024);
    }
}
