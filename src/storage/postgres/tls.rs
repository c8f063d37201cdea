//! TLS to a PostgreSQL server on another host (issue 27), on rustls with our
//! ring provider: tokio-postgres 0.7 knows only sslmode disable / prefer /
//! require, so verify-ca and verify-full are ours. tokio-postgres is told
//! `require` and given this connector, whose rustls config checks the
//! certificate against `[database] ca_file` (or the URL's `sslrootcert`) and,
//! for verify-full, the host name. With `sslmode = "disable"` (the default,
//! loopback) nothing here runs.

use crate::process::config::{DatabaseConfig, PgSslMode};
use crate::tls::TlsError;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// Makes a TLS session per connection; cheap to clone (one shared config).
#[derive(Clone)]
pub(crate) struct MakeRustls(Arc<rustls::ClientConfig>);

impl MakeRustls {
    /// The connector `cfg` asks for, or None for a plain connection.
    pub(crate) fn from_config(cfg: &DatabaseConfig) -> Result<Option<Self>, TlsError> {
        let config = match cfg.ssl() {
            (PgSslMode::Disable, _) => return Ok(None),
            (PgSslMode::VerifyCa, ca) => crate::tls::client_config_any_name(&ca)?,
            (PgSslMode::VerifyFull, ca) => crate::tls::client_config(&ca)?,
        };
        Ok(Some(MakeRustls(config)))
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, Self::Error> {
        Ok(Connect {
            config: self.0.clone(),
            name: ServerName::try_from(host.to_string())?,
        })
    }
}

pub(crate) struct Connect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(TlsStream)
        })
    }
}

pub(crate) struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    /// No channel binding: SCRAM authenticates without it (the certificate
    /// check is what stops a man in the middle here).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Opens one session outside the pools (the worker lease, backup's counts),
/// its connection driven by a task of its own.
pub(crate) async fn connect_one(
    pg: &tokio_postgres::Config,
    tls: Option<&MakeRustls>,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    Ok(match tls {
        None => {
            let (client, conn) = pg.connect(tokio_postgres::NoTls).await?;
            (client, tokio::spawn(async move { drop(conn.await) }))
        }
        Some(tls) => {
            let (client, conn) = pg.connect(tls.clone()).await?;
            (client, tokio::spawn(async move { drop(conn.await) }))
        }
    })
}
